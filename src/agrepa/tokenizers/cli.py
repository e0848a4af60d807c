"""``agrepa tokens {fit,encode}``."""
from __future__ import annotations

from .. import config as config_mod
from ..parts import add_part_args, part_mode


def cmd_fit(args) -> int:
    from ..device import set_threads
    from .streams import fit_stream  # stage modules are imported when their subcommand runs

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    fit_stream(cfg, args.stream, args.manifest, args.out, features=args.features)
    return 0


def cmd_encode(args) -> int:
    from ..device import set_threads
    from .streams import encode_manifest, gather_tokens

    cfg = config_mod.from_args(args)
    if part_mode(args) == "gather":
        gather_tokens(cfg, args.manifest, args.out, args.parts)
        return 0
    if not (args.speech_model and args.audio_model):
        raise ValueError("tokens encode: --speech-model and --audio-model are required (except with --gather)")
    set_threads(args.threads)
    encode_manifest(cfg, args.token_config, args.manifest, args.out, speech_model=args.speech_model,
                    audio_model=args.audio_model, beats_model=args.beats_model,
                    semantic=args.semantic, acoustic=args.acoustic, part=args.part, parts=args.parts,
                    primary=args.primary)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("tokens", help="fit tokenizers; encode clips into the unified vocabulary")
    sub = p.add_subparsers(dest="tokens_command", metavar="ACTION")
    sub.required = True

    f = sub.add_parser("fit", help="fit one stream's tokenizer on the train split")
    f.add_argument("--stream", required=True, choices=["speech", "audio", "beats"])
    f.add_argument("--features", default=None,
                   help="teacher embedding store (semantic for speech, acoustic for audio/beats); "
                        "not needed for the s3-onnx speech tokenizer")
    f.add_argument("--manifest", required=True)
    f.add_argument("--out", required=True, help="tokenizer directory (config.json, weights, metrics.json)")
    config_mod.add_cli_args(f)
    f.set_defaults(func=cmd_fit)

    e = sub.add_parser("encode", help="tokenize every clip of a manifest (Config A or B)")
    e.add_argument("--token-config", required=True, choices=["A", "B"])
    e.add_argument("--speech-model", default=None, help="fitted speech tokenizer directory (not with --gather)")
    e.add_argument("--audio-model", default=None, help="fitted audio tokenizer directory (not with --gather)")
    e.add_argument("--beats-model", default=None, help="fitted beats tokenizer directory (Config B)")
    e.add_argument("--semantic", default=None, help="semantic teacher embedding store")
    e.add_argument("--acoustic", default=None, help="acoustic teacher embedding store")
    e.add_argument("--primary", default=None,
                   help="Config B: Config A's token store, read as B's primary column instead of encoding "
                        "the speech and audio streams again")
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True, help="output token store directory")
    add_part_args(e)
    config_mod.add_cli_args(e)
    e.set_defaults(func=cmd_encode)
