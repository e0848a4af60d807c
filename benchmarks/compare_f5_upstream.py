"""Our F5 backbone against upstream F5-TTS on the same weights (issue 25, item 7).

Run in a scratch environment that has f5-tts installed (never a project dependency)::

    PYTHONPATH=src:tests python benchmarks/compare_f5_upstream.py

It maps a randomly perturbed upstream ``DiT`` onto ours with ``load_upstream_state_dict``
and prints the largest difference of the velocities (measured with f5-tts 1.1.22: 2.4e-7).
"""
import torch

from agrepa.model.f5 import load_upstream_state_dict
from test_f5_upstream import CONV, DEPTH, DIM, FF, HEAD_DIM, HEADS, MEL, TEXT, V, ours


def main():
    """With f5-tts importable (a scratch environment; not a project dependency): the mapped model's
    velocity equals upstream's on the same weights and text embeddings, no padding."""
    import f5_tts.model.backbones.dit as up     # needs f5-tts (and x_transformers) installed
    torch.manual_seed(0)
    u = up.DiT(dim=DIM, depth=DEPTH, heads=HEADS, dim_head=HEAD_DIM, ff_mult=FF, mel_dim=MEL, text_num_embeds=V,
               text_dim=TEXT, conv_layers=CONV, long_skip_connection=True).eval()
    with torch.no_grad():
        for p in u.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m = ours()
    load_upstream_state_dict(m, u.state_dict())
    with torch.no_grad():
        m.token_emb.table.weight.copy_(u.text_embed.text_embed.weight)       # the same rows: id k = character k-1
    g = torch.Generator().manual_seed(3)
    x, cond = torch.randn(2, 20, MEL, generator=g), torch.randn(2, 20, MEL, generator=g)
    text, t = torch.randint(0, V, (2, 20), generator=g), torch.rand(2, generator=g)
    with torch.no_grad():
        diff = (m(x, t, text + 1, cond) - u(x, cond, text, t)).abs().max()
    print(f"max |ours - upstream| = {float(diff):.3g}")
    assert float(diff) < 1e-5


if __name__ == "__main__":
    main()
