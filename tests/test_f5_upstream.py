"""The F5 backbone against upstream F5-TTS (f5-tts 1.1.x, ``f5_tts/model/backbones/dit.py`` and
``f5_tts/model/modules.py``; issue 25 item 7): upstream's time basis, and an upstream ``DiT``
state dict mapped onto ours, tensor by tensor. The upstream layout is written out here from
upstream's module structure (no f5-tts needed); the last test compares forwards where f5-tts is
installed: benchmarks/compare_f5_upstream.py (never a project dependency)."""
from __future__ import annotations

import math

import pytest
import torch

from agrepa.model.dit import DiT, apply_rotary, timestep_embedding
from agrepa.model.f5 import F5, f5_time_embedding, load_upstream_state_dict

torch.set_num_threads(1)

# a tiny upstream config: DiT(dim=32, depth=2, heads=2, dim_head=16, ff_mult=2, mel_dim=6,
# text_num_embeds=10, text_dim=16, conv_layers=2, long_skip_connection=True)
DIM, DEPTH, HEADS, HEAD_DIM, FF, MEL, V, TEXT, CONV = 32, 2, 2, 16, 2, 6, 10, 16, 2


def upstream_layout(long_skip: bool = True) -> dict[str, tuple[int, ...]]:
    """Key -> shape of upstream's ``DiT.state_dict()`` at the tiny config (v1 Base options)."""
    s: dict[str, tuple[int, ...]] = {
        "time_embed.time_mlp.0.weight": (DIM, 256), "time_embed.time_mlp.0.bias": (DIM,),   # TimestepEmbedding
        "time_embed.time_mlp.2.weight": (DIM, DIM), "time_embed.time_mlp.2.bias": (DIM,),
        "text_embed.text_embed.weight": (V + 1, TEXT),                                        # + filler token 0
        "input_embed.proj.weight": (DIM, 2 * MEL + TEXT), "input_embed.proj.bias": (DIM,),
        "input_embed.conv_pos_embed.conv1d.0.weight": (DIM, DIM // 16, 31),
        "input_embed.conv_pos_embed.conv1d.0.bias": (DIM,),
        "input_embed.conv_pos_embed.conv1d.2.weight": (DIM, DIM // 16, 31),
        "input_embed.conv_pos_embed.conv1d.2.bias": (DIM,),
        "rotary_embed.inv_freq": (HEAD_DIM // 2,),                                            # a persistent buffer
        "norm_out.linear.weight": (2 * DIM, DIM), "norm_out.linear.bias": (2 * DIM,),         # AdaLayerNorm_Final
        "proj_out.weight": (MEL, DIM), "proj_out.bias": (MEL,),
    }
    for c in range(CONV):                                                                     # ConvNeXtV2Block
        p = f"text_embed.text_blocks.{c}"
        s.update({f"{p}.dwconv.weight": (TEXT, 1, 7), f"{p}.dwconv.bias": (TEXT,),
                  f"{p}.norm.weight": (TEXT,), f"{p}.norm.bias": (TEXT,),
                  f"{p}.pwconv1.weight": (2 * TEXT, TEXT), f"{p}.pwconv1.bias": (2 * TEXT,),
                  f"{p}.grn.gamma": (1, 1, 2 * TEXT), f"{p}.grn.beta": (1, 1, 2 * TEXT),
                  f"{p}.pwconv2.weight": (TEXT, 2 * TEXT), f"{p}.pwconv2.bias": (TEXT,)})
    for l in range(DEPTH):                                                                    # DiTBlock
        p = f"transformer_blocks.{l}"
        s.update({f"{p}.attn_norm.linear.weight": (6 * DIM, DIM), f"{p}.attn_norm.linear.bias": (6 * DIM,)})
        for x in "qkv":
            s.update({f"{p}.attn.to_{x}.weight": (HEADS * HEAD_DIM, DIM), f"{p}.attn.to_{x}.bias": (HEADS * HEAD_DIM,)})
        s.update({f"{p}.attn.to_out.0.weight": (DIM, HEADS * HEAD_DIM), f"{p}.attn.to_out.0.bias": (DIM,),
                  f"{p}.ff.ff.0.0.weight": (FF * DIM, DIM), f"{p}.ff.ff.0.0.bias": (FF * DIM,),
                  f"{p}.ff.ff.2.weight": (DIM, FF * DIM), f"{p}.ff.ff.2.bias": (DIM,)})
    if long_skip:
        s["long_skip_connection.weight"] = (DIM, 2 * DIM)
    return s


def upstream_sd(long_skip: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) for k, shape in upstream_layout(long_skip).items()}
    sd["rotary_embed.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    return sd


def ours(long_skip: bool = True) -> F5:
    torch.manual_seed(1)
    return F5(n_layers=DEPTH, conv_layers=CONV, dim=DIM, n_heads=HEADS, n_mels=MEL, vocab_size=V + 1,
              ff_mult=FF, text_dim=TEXT, long_skip=long_skip).eval()


def test_upstream_state_dict_lands_tensor_by_tensor():
    sd, m = upstream_sd(), ours()
    table = m.token_emb.table.weight.detach().clone()
    rep = load_upstream_state_dict(m, sd)
    o = m.state_dict()
    same = {"time_embed.time_mlp.0": "time_mlp.0", "time_embed.time_mlp.2": "time_mlp.2",
            "input_embed.proj": "input_proj", "input_embed.conv_pos_embed.conv1d.0": "conv_pos.conv1",
            "input_embed.conv_pos_embed.conv1d.2": "conv_pos.conv2", "proj_out": "final.linear"}
    for c in range(CONV):
        for sub in ("dwconv", "norm", "pwconv1", "pwconv2"):
            same[f"text_embed.text_blocks.{c}.{sub}"] = f"text_blocks.{c}.{sub}"
    for l in range(DEPTH):
        same.update({f"transformer_blocks.{l}.attn_norm.linear": f"blocks.{l}.ada.1",
                     f"transformer_blocks.{l}.attn.to_out.0": f"blocks.{l}.attn.proj",
                     f"transformer_blocks.{l}.ff.ff.0.0": f"blocks.{l}.mlp.0",
                     f"transformer_blocks.{l}.ff.ff.2": f"blocks.{l}.mlp.3"})
    for up, name in same.items():
        for p in ("weight", "bias"):
            assert torch.equal(o[f"{name}.{p}"], sd[f"{up}.{p}"]), (up, name, p)
    for c in range(CONV):
        for p in ("gamma", "beta"):
            assert torch.equal(o[f"text_blocks.{c}.grn.{p}"], sd[f"text_embed.text_blocks.{c}.grn.{p}"])
    assert torch.equal(o["long_skip.weight"], sd["long_skip_connection.weight"])
    # q, k: upstream's interleaved rotary pairs (2i, 2i+1) become our halves (i, i + HEAD_DIM/2), per head
    perm = torch.tensor([h * HEAD_DIM + (2 * j if j < HEAD_DIM // 2 else 2 * (j - HEAD_DIM // 2) + 1)
                         for h in range(HEADS) for j in range(HEAD_DIM)])
    for l in range(DEPTH):
        for p in ("weight", "bias"):
            q, k, v = o[f"blocks.{l}.attn.qkv.{p}"].chunk(3, dim=0)
            up = f"transformer_blocks.{l}.attn"
            assert torch.equal(q, sd[f"{up}.to_q.{p}"][perm]) and torch.equal(k, sd[f"{up}.to_k.{p}"][perm])
            assert torch.equal(v, sd[f"{up}.to_v.{p}"])
    # the final adaLN: upstream chunks (scale, shift), ours (shift, scale)
    for p in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{p}"].chunk(2, dim=0)
        assert torch.equal(o[f"final.ada.1.{p}"], torch.cat([shift, scale]))
    assert torch.equal(m.token_emb.table.weight, table)                        # not upstream's characters
    assert rep["kept"] == ["token_emb.table.weight"]
    assert set(rep["skipped"]) == {"text_embed.text_embed.weight", "rotary_embed.inv_freq"}
    assert len(rep["loaded"]) == len(o) - 1


def _interleaved_rotary(x: torch.Tensor, T: int) -> torch.Tensor:
    """x_transformers' RotaryEmbedding + apply_rotary_pos_emb, from its formula: pairs (2i, 2i+1)."""
    inv = 1.0 / (10000 ** (torch.arange(0, x.shape[-1], 2).float() / x.shape[-1]))
    f = torch.outer(torch.arange(T).float(), inv).repeat_interleave(2, dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rot = torch.stack([-x2, x1], dim=-1).flatten(-2)
    return x * f.cos() + rot * f.sin()


def test_mapped_attention_scores_equal_upstreams_interleaved_rotary():
    sd, m = upstream_sd(), ours()
    load_upstream_state_dict(m, sd)
    T = 9
    x = torch.randn(1, T, DIM, generator=torch.Generator().manual_seed(2))

    def heads(y):
        return y.view(1, T, HEADS, HEAD_DIM).transpose(1, 2)

    a = "transformer_blocks.0.attn"
    qu = _interleaved_rotary(heads(x @ sd[f"{a}.to_q.weight"].T + sd[f"{a}.to_q.bias"]), T)
    ku = _interleaved_rotary(heads(x @ sd[f"{a}.to_k.weight"].T + sd[f"{a}.to_k.bias"]), T)
    q, k, _ = m.blocks[0].attn.qkv(x).view(1, T, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    cos, sin = m.rotary(T, x.device)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    torch.testing.assert_close(q @ k.transpose(-1, -2), qu @ ku.transpose(-1, -2), rtol=1e-5, atol=1e-4)


def test_missing_unexpected_and_misshapen_keys_name_the_key():
    m = ours()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = upstream_sd()
    del sd["transformer_blocks.1.attn.to_k.bias"]
    with pytest.raises(KeyError, match=r"missing \['transformer_blocks\.1\.attn\.to_k\.bias'\]"):
        load_upstream_state_dict(m, sd)
    sd = {**upstream_sd(), "transformer_blocks.0.attn.q_norm.weight": torch.ones(HEAD_DIM)}
    with pytest.raises(KeyError, match=r"unexpected \['transformer_blocks\.0\.attn\.q_norm\.weight'\].*qk_norm"):
        load_upstream_state_dict(m, sd)
    with pytest.raises(KeyError, match=r"missing \['long_skip_connection\.weight'\]"):
        load_upstream_state_dict(m, upstream_sd(long_skip=False))
    sd = upstream_sd()
    sd["input_embed.proj.weight"] = torch.zeros(DIM, 2 * MEL + TEXT + 1)
    with pytest.raises(ValueError, match=r"'input_embed\.proj\.weight' has shape \(32, 29\)"):
        load_upstream_state_dict(m, sd)
    sd = upstream_sd()
    sd["rotary_embed.inv_freq"] = sd["rotary_embed.inv_freq"][:4]                # another head size
    with pytest.raises(ValueError, match="rotary_embed.inv_freq"):
        load_upstream_state_dict(m, sd)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # failed loads changed nothing


def test_checkpoint_prefixes_are_found_and_other_modules_ignored():
    """An official checkpoint's EMA weights sit under ``ema_model.transformer.`` next to other keys."""
    sd = upstream_sd()
    ckpt = {**{f"ema_model.transformer.{k}": v for k, v in sd.items()}, "initted": torch.tensor(True),
            "step": torch.tensor(5), "ema_model.mel_spec.mel_stft.spectrogram.window": torch.ones(4)}
    a, b = ours(), ours()
    load_upstream_state_dict(a, sd)
    load_upstream_state_dict(b, ckpt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_f5_time_embedding_is_sin_cos_of_1000_t():
    """Upstream ``SinusPositionEmbedding``: [sin | cos] of 1000 t x exp(-ln(10000) i / (half - 1))."""
    t = torch.tensor([0.0, 0.013, 0.5, 0.999, 1.0])
    e = f5_time_embedding(t, 256)
    half = 128
    i = torch.arange(half, dtype=torch.float64)
    args = 1000 * t.double()[:, None] * torch.exp(-math.log(10000) * i / (half - 1))[None]
    torch.testing.assert_close(e.double(), torch.cat([args.sin(), args.cos()], -1), rtol=0, atol=2e-4)
    # the float32 computation as upstream writes it, to the bit
    step = math.log(10000) / (half - 1)
    f = torch.exp(torch.arange(half).float() * -step)
    a32 = 1000 * t.unsqueeze(1) * f.unsqueeze(0)
    assert torch.equal(e, torch.cat((a32.sin(), a32.cos()), dim=-1))
    assert torch.equal(e[0], torch.cat([torch.zeros(half), torch.ones(half)]))     # t = 0: sin 0, cos 1
    # and the backbone uses it
    m = ours()
    B, T = t.shape[0], 7
    _, ctx = m.prepare(torch.zeros(B, T, MEL), t, torch.ones(B, 3, dtype=torch.long), torch.zeros(B, T, MEL))
    assert torch.equal(ctx.c, m.time_mlp(e))


def test_dit_time_basis_is_still_cos_sin():
    """The default DiT (``model.arch: dit``) keeps its basis bit for bit: [cos | sin] of 1000 t x
    10000^(-i / half), and its forward the value it had before the F5 change."""
    t = torch.tensor([0.0, 0.25, 0.7, 1.0])
    half = 128
    f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    a = (t * 1000.0)[:, None] * f[None]
    want = torch.cat([torch.cos(a), torch.sin(a)], dim=-1)
    assert torch.equal(timestep_embedding(t, 256), want)
    torch.manual_seed(0)
    m = DiT(n_layers=3, dim=32, n_heads=2, n_mels=8, vocab_size=20).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 11, 8, generator=g), torch.rand(2, generator=g)
    tok, prompt = torch.randint(1, 20, (2, 5), generator=g), torch.randn(2, 11, 8, generator=g)
    _, ctx = m.prepare(x, t, tok, prompt)
    assert torch.equal(ctx.c, m.time_mlp(timestep_embedding(t, 256)))
    with torch.no_grad():
        v = m(x, t, tok, prompt)
    assert float(v.double().sum()) == pytest.approx(18.859207589179277, rel=1e-5)   # before the change (1c11bff^)
    assert float(v[0, 0, 0]) == pytest.approx(0.9412388205528259, rel=1e-5)


@pytest.mark.parametrize("arch", ["dit", "f5"])
def test_attention_dropout_acts_where_each_reference_puts_it(arch):
    """F5 (as F5-TTS's ``Attention.to_out[1]``): dropout on the attention output, every element
    either 0 or its eval value / (1 - p). The DiT keeps dropout on the attention probabilities."""
    from agrepa.model.dit import Attention, Context

    torch.manual_seed(0)
    att = Attention(DIM, HEADS, 0.5, "output" if arch == "f5" else "probs")
    if arch == "f5":
        assert ours().blocks[0].attn.dropout_on == "output"
    else:
        assert DiT(n_layers=1, dim=DIM, n_heads=HEADS).blocks[0].attn.dropout_on == "probs"
    T = 12
    x = torch.randn(2, T, DIM)
    cos, sin = F5(n_layers=1, conv_layers=0, dim=DIM, n_heads=HEADS).rotary(T, x.device)
    ctx = Context(torch.zeros(2, DIM), cos, sin, None, None)
    with torch.no_grad():
        ref = att.eval()(x, ctx)
        out = att.train()(x, ctx)
    on_output = (out == 0) | torch.isclose(out, 2 * ref, rtol=1e-5, atol=1e-6)
    assert bool(on_output.all()) == (arch == "f5")
    if arch == "f5":
        assert 0.3 < float((out == 0).float().mean()) < 0.7


def test_paper_size_parameters_at_the_configured_vocabulary():
    """docs/fidelity.md's F5 count: paper.yaml's F5 at Config A's vocabulary (1 + 4096 speech + 4096
    audio = 8193, Table 4's ``token_config: A``); without the token table it is F5-TTS v1 Base's
    network, counted from upstream's shapes (``upstream_layout`` at v1 Base sizes), exactly."""
    from agrepa import config as config_mod
    from agrepa.model import build_model
    from agrepa.tokenizers.vocab import Vocab
    from test_workflow_support import REPO

    cfg = config_mod.load([REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml"])
    cfg = config_mod.deep_merge(cfg, {"model": {"arch": "f5"}})
    assert cfg["report"]["table4"]["token_config"] == "A"
    vocab = Vocab({s: cfg["tokens"][s]["k"] for s in ("speech", "audio")}).vocab_size
    assert vocab == 8193
    with torch.device("meta"):
        m = build_model(cfg, vocab)
    total = sum(p.numel() for p in m.parameters())
    table = m.token_emb.table.weight.numel()
    assert (total, table) == (339_988_068, 8193 * 512)
    d, td, mel, ff = 1024, 512, 100, 2                                   # F5TTS_v1_Base.yaml
    lin = lambda i, o: i * o + o                                         # noqa: E731
    block = lin(d, 6 * d) + 4 * lin(d, d) + lin(d, ff * d) + lin(ff * d, d)
    convnext = td * 7 + td + 2 * td + lin(td, 2 * td) + 2 * 2 * td + lin(2 * td, td)
    network = (lin(256, d) + lin(d, d) + 4 * convnext + lin(2 * mel + td, d) + 2 * (d * d // 16 * 31 + d)
               + 22 * block + lin(d, 2 * d) + lin(d, mel))
    assert total - table == network == 335_793_252
