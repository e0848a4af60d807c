"""Regenerate workflow/schemas/config.schema.yaml after a config key was added or removed.

    .venv/bin/python workflow/schemas/sync_schema.py

The workflow's own sections (name, results_dir, device, seeds, token_configs, methods,
resources, report) come from workflow/schemas/workflow_sections.schema.yaml, written by
hand. Every other section is derived from config/config.yaml, the embedded default,
which has every key: objects get additionalProperties: false (a misspelt key fails),
leaves get the type of their default (null defaults accept anything; a key whose line
mentions null also accepts null) and the enums listed in ENUMS below. The enum names
ARCHS, DOMAINS and STRATEGIES (in the hand-written sections too) are the lists that
`agrepa.config` defines, so the schema, the workflow's wildcards and the code share them.
The output is package data: `agrepa.config.load` validates every CLI's config with it.
"""
import re
import sys
from pathlib import Path

import yaml

from agrepa.config import ARCHS, CACHE_STRATEGIES, DOMAINS, SCHEMA, STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
text = (ROOT / 'config' / 'config.yaml').read_text()
cfg = yaml.safe_load(text)
NAMED_ENUMS = {'ARCHS': list(ARCHS), 'DOMAINS': list(DOMAINS), 'STRATEGIES': list(STRATEGIES)}


def named_enums(node):
    """Replace `enum: DOMAINS` / `enum: STRATEGIES` by the lists agrepa.config defines."""
    if isinstance(node, dict):
        return {k: (list(NAMED_ENUMS[v]) if k == 'enum' and isinstance(v, str) else named_enums(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [named_enums(v) for v in node]
    return node


mine = named_enums(yaml.safe_load((ROOT / 'workflow' / 'schemas' / 'workflow_sections.schema.yaml').read_text()))
MINE = set(mine['properties'])
nullable = set()
for line in text.splitlines():
    m = re.match(r'\s*([A-Za-z_][\w-]*):(.*)$', line)
    if m and 'null' in m.group(2):
        nullable.add(m.group(1))
ENUMS = {
    'data.source': ['synth', 'real'],
    'selection.strategies[]': list(STRATEGIES),
    'teachers.semantic.name': ['whisper'],
    'teachers.semantic.backend': ['ctranslate2', 'transformers'],
    'teachers.acoustic.name': ['events', 'beats'],
    'tokens.speech.kind': ['kmeans', 's3-onnx'],
    'tokens.beats.kind': ['kmeans', 'beats-tokenizer'],
    'tokens.audio.kind': ['repcodec'],
    'teachers.acoustic.beats_frames': ['patches', 'time'],
    'teachers.frames_dtype': ['float16', 'bfloat16', 'float32'],
    'data.mels.normalization': ['global', 'per_bin'],
    'audio.resample.method': ['sinc_interp_kaiser', 'sinc_interp_hann'],
    'train.schedule': ['onecycle', 'warmup_constant'],
    'train.epoch_size': ['clips', 'balanced'],
    'train.branch_start': ['continue', 'restart'],
    'train.repa_weighting': ['total', 'literal'],
    'train.cfg_mode': ['sample', 'batch'],
    'train.bitc_objective.A': ['full', 'heads', 'none'],
    'train.bitc_objective.B': ['full', 'heads', 'none'],
    'probe.foga_mode': ['train', 'eval'],
    'rr.pool': ['max', 'mean'],
    'rr.when': ['cfg', 'always'],
    'rr.text': ['warmup', 'live', 'codebook'],
    'selection.mode': ['per_domain', 'merged'],
    'sample.cfg_uncond_prompt': ['keep', 'drop', 'auto'],
    'model.arch': list(ARCHS),
    **{f'model.{a}.t_train': ['uniform', 'cosine'] for a in ARCHS},
    **{f'model.{a}.cfg_formula': ['uncond', 'cond'] for a in ARCHS},
    **{f'model.{a}.t_schedule': ['sway', 'cosine'] for a in ARCHS},
    **{f'model.{a}.cfg_uncond_prompt': ['keep', 'drop'] for a in ARCHS if a != 'dit'},
    'sample.vocoder': ['griffinlim', 'vocos'],
    'eval.asr.backend': ['faster-whisper', 'transformers'],
    'eval.fad.embedding': ['whisper-encoder', 'vggish'],
    'eval.mos.speech': ['dnsmos', 'utmos', 'none'],
    'eval.mos.audio': ['audiobox', 'dnsmos', 'none'],
    'eval.speaker': ['resemblyzer', 'none'],
    'eval.events.classifier': ['events', 'beats', 'none'],
    'eval.convergence.metric': ['fm_loss', 'fad'],
    'lsac.probe.split': ['train', 'valid', 'test'],
    'lsac.strategies[]': list(CACHE_STRATEGIES),
    'lsac.metrics[]': ['wer', 'fad', 'ter'],
}

def infer(v, path):
    key = path.split('.')[-1]
    if v is None:
        return {}
    if isinstance(v, bool):
        s = {'type': 'boolean'}
    elif isinstance(v, int):
        s = {'type': 'integer'}
    elif isinstance(v, float):
        s = {'type': 'number'}
    elif isinstance(v, str):
        s = {'type': 'string'}
        if path in ENUMS:
            s['enum'] = ENUMS[path]
    elif isinstance(v, list):
        s = {'type': 'array'}
        types = {type(x) for x in v}
        if v and len(types) == 1 and not isinstance(v[0], (dict, list)):
            s['items'] = infer(v[0], path + '[]')
        elif v and types <= {int, float}:
            s['items'] = {'type': 'number'}
    elif isinstance(v, dict):
        return {'type': 'object', 'additionalProperties': False, 'required': list(v),
                'properties': {k: infer(x, f'{path}.{k}') for k, x in v.items()}}
    else:
        raise TypeError(path)
    if key in nullable:
        s['type'] = [s['type'], 'null']
        if 'enum' in s:
            s['enum'] = s['enum'] + [None]
    return s

props = {}
for k, v in cfg.items():
    props[k] = mine['properties'][k] if k in MINE else infer(v, k)
missing = MINE - set(cfg)
if missing:
    sys.exit(f'config/config.yaml lacks the workflow sections {sorted(missing)}')
schema = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    'description': mine['description'],
    'type': 'object',
    'additionalProperties': False,
    'required': list(cfg),
    'properties': props,
}
if 'allOf' in mine:  # cross-key rules (if / then), written by hand
    schema['allOf'] = mine['allOf']
header = ("# JSON schema of the workflow config (config/config.yaml and its overlays).\n"
          "# The Snakefile validates the merged config against it before any job runs:\n"
          "# additionalProperties is false everywhere, so a misspelt key fails with the key named.\n"
          "# Generated by workflow/schemas/sync_schema.py (run it after adding a config key);\n"
          "# the workflow's own sections come from workflow_sections.schema.yaml.\n")
Path(str(SCHEMA)).write_text(
    header + yaml.safe_dump(schema, sort_keys=False, default_flow_style=None, width=100))
