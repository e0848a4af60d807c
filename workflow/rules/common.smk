# Shared helpers of the workflow: where every artifact lives, the experiment
# grid read from the config, per-rule resources, the path check and the merged
# config file that every rule passes to `agrepa --config`.
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from snakemake.logging import logger

from agrepa import io as agrepa_io
from agrepa import warm as agrepa_warm

R = config["results_dir"]


def res_path(*parts):
    """A path under results_dir."""
    return os.path.join(R, *parts)


# --- artifacts (docs/architecture.md) ---------------------------------------------
MANIFEST = res_path("data", "manifest.csv")
MELS = res_path("data", "mels", "index.json")
EVENTS_TEACHER = res_path("teachers", "events", "model.safetensors")
EMBEDDINGS = res_path("embeddings", "{role}", "index.json")
TOKEN_MODEL = res_path("tokens", "models", "{stream}")
TOKENS = res_path("tokens", "{tc}", "index.json")
# scatter / gather (agrepa/parts.py): part k of K of a store DIR/index.json is DIR/part-kofK/index.json
PART = os.path.join("part-{k}of{n}", "index.json")


def part_of(store):
    """The part-job output pattern of a gathered store's index (wildcards k, n: 5 digits)."""
    return os.path.join(os.path.dirname(store), PART)


def parts_of(store, stage, **wildcards):
    """The K part indexes (K = shards.<stage>) the gather of ``store`` reads."""
    n = int(config["shards"][stage])
    return [part_of(store).format(k=f"{k:05d}", n=f"{n:05d}", **wildcards) for k in range(n)]
WARMUP = res_path("runs", "{tc}", "seed{seed}", "warmup", "final.pt")
PROBES = res_path("probes", "{tc}", "seed{seed}", "probes.csv")
SELECTION = res_path("selection", "{tc}", "seed{seed}", "{strategy}.json")
BRANCH = res_path("runs", "{tc}", "seed{seed}", "{method}", "final.pt")
SAMPLES = res_path("samples", "{tc}", "seed{seed}", "{method}", "samples.csv")
EVAL = res_path("eval", "{tc}", "seed{seed}", "{method}.json")
REFERENCE_EVAL = res_path("eval", "reference.json")
CONVERGENCE = res_path("convergence", "{tc}", "seed{seed}", "{method}.csv")
HELDOUT = res_path("heldout", "{tc}", "seed{seed}", "{method}.csv")
CLASSIFIER = res_path("eval", "classifier", "model.safetensors")
METRICS = res_path("metrics.csv")
METRICS_TABLE2 = res_path("reports", "metrics_table2.csv")
PAIRED = res_path("paired.csv")
CLIPS = res_path("clips.csv")
PAIRED_TABLE2 = res_path("reports", "paired_table2.csv")
SUMMARY = res_path("summary.md")
TABLE1 = res_path("table1.csv")
TABLE2 = res_path("table2.csv")
TABLE3 = res_path("table3.csv")


def vs_paper(table):
    """results/table2.csv -> results/table2_vs_paper.csv (our numbers beside the paper's)."""
    return table.replace(".csv", "_vs_paper.csv")


FIG_FORMAT = config["report"]["figures"]["format"]
FIGURE1 = res_path("figures", "figure1_{tc}." + FIG_FORMAT)
FIG_LAYER_SCORES = res_path("figures", "layer_scores_{tc}." + FIG_FORMAT)
FIG_CONVERGENCE = res_path("figures", "convergence_{tc}." + FIG_FORMAT)
FIG_SEED_SCATTER = res_path("figures", "seed_scatter." + FIG_FORMAT)
FIG_FOREST = res_path("figures", "forest." + FIG_FORMAT)
LISTENING_TEST = res_path("listening_test", "index.html")
LSAC_DIR = res_path("lsac", "{tc}", "seed{seed}", "{method}")
LSAC_PROBE = os.path.join(LSAC_DIR, "probe.csv")
LSAC_PLANS = os.path.join(LSAC_DIR, "plans", "index.json")
LSAC_EVAL = os.path.join(LSAC_DIR, "eval", "clips.csv")
TABLE_L1 = res_path("table_l1.csv")
FIG_L2 = res_path("figures", "figure_l2_{tc}." + FIG_FORMAT)
FIG_LSAC_PROBE = res_path("figures", "lsac_probe_{tc}." + FIG_FORMAT)
# Table 4: the other backbones (model.arch's own runs are the paths above)
WARMUP_ARCH = res_path("runs", "{arch}", "{tc}", "seed{seed}", "warmup", "final.pt")
PROBES_ARCH = res_path("probes", "{arch}", "{tc}", "seed{seed}", "probes.csv")
SELECTION_ARCH = res_path("selection", "{arch}", "{tc}", "seed{seed}", "{strategy}.json")
BRANCH_ARCH = res_path("runs", "{arch}", "{tc}", "seed{seed}", "{method}", "final.pt")
SAMPLES_ARCH = res_path("samples", "{arch}", "{tc}", "seed{seed}", "{method}", "samples.csv")
EVAL_ARCH = res_path("eval", "{arch}", "{tc}", "seed{seed}", "{method}.json")
HELDOUT_ARCH = res_path("heldout", "{arch}", "{tc}", "seed{seed}", "{method}.csv")
TABLE4 = res_path("table4.csv")
FIG_TABLE4 = res_path("figures", "table4." + FIG_FORMAT)
# seed 003, representation-similarity regularisation (rr.smk)
RR_RSA = res_path("rr", "rsa", "{tc}", "seed{seed}", "{method}.json")
RR_SAMPLES = res_path("rr", "samples_cfg{scale}", "{tc}", "seed{seed}", "{method}", "samples.csv")
RR_EVAL = res_path("rr", "eval_cfg{scale}", "{tc}", "seed{seed}", "{method}.json")
RR_METRICS = res_path("reports", "metrics_rr_{table}.csv")   # table: r1 | r2
TABLE_R1 = res_path("table_r1.csv")
TABLE_R2 = res_path("table_r2.csv")
FIGURE_R3 = res_path("figures", "figure_r3." + FIG_FORMAT)
FIGURE_R3_DATA = res_path("figures", "figure_r3.csv")  # the plotted numbers, beside the figure
FIGURE_STYLE = os.path.join(workflow.basedir, "workflow", "report", "figures.mplstyle")


def log_path(rule_name, *wildcard_parts):
    """One log file per job: {results_dir}/logs/<rule>/<wildcards>.log."""
    name = "_".join(wildcard_parts) if wildcard_parts else rule_name
    return res_path("logs", rule_name, name + ".log")


def bench_path(rule_name, *wildcard_parts):
    """One Snakemake benchmark file per job, named like its log: {results_dir}/benchmarks/<rule>/<wildcards>.tsv
    (wall clock, max RSS/VMS/USS/PSS, I/O and CPU time of the job's process tree; locally and under SLURM)."""
    name = "_".join(wildcard_parts) if wildcard_parts else rule_name
    return res_path("benchmarks", rule_name, name + ".tsv")


# --- the experiment grid -----------------------------------------------------------
def experiment_grid(cfg):
    """Token configs, seeds, trained methods and the selection strategies they need.

    Methods trained = Table 2's rows + Table 3's baseline + the method behind each
    of `selection.strategies` (report.table3.strategies maps foga -> ag_repa, so
    Table 3's FoG-A row reuses the AG-REPA run). Raises a ValueError naming the
    config key when the grid refers to something the config does not define.
    """
    catalogue = cfg["methods"]
    t2 = list(cfg["report"]["table2"]["methods"])
    methods = agrepa_config.reported_methods(cfg)  # each defined and in range: checked by config validation
    strategy_method = {s: cfg["report"]["table3"]["strategies"][s] for s in cfg["selection"]["strategies"]}
    rr = agrepa_config.rr_runs(cfg)      # seed 003's runs (checked by config validation too)
    in_all = rr["r1"]["methods"] + rr["r3"]["methods"] + (rr["r2"]["methods"] if cfg["report"]["rr"]["r2"]["in_all"] else [])
    for m in in_all:
        agrepa_config.branch_train(cfg, m)   # rule all's RR branches train on model.arch (else: an error naming the key)
    needed = []
    for m in methods + [m for m in rr["methods"] if m not in methods]:
        spec = catalogue[m]
        if spec.get("selection") and spec["selection"] not in needed:
            needed.append(spec["selection"])
    for s, m in strategy_method.items():
        if catalogue[m].get("selection") != s:
            raise ValueError(f"config key report.table3.strategies.{s}: method {m!r} does not use "
                             f"selection {s!r} (methods.{m} = {catalogue[m]})")
    outside = [tc for tc in cfg["branch_token_configs"] if tc not in cfg["token_configs"]]
    if outside:
        raise ValueError(f"config key branch_token_configs: {outside} not in token_configs {cfg['token_configs']}")
    return {
        "lsac_methods": list(cfg["lsac"]["methods"]),        # checked by config validation
        "lsac_seeds": [int(s) for s in cfg["seeds"][: int(cfg["lsac"]["n_seeds"])]],
        "token_configs": list(cfg["token_configs"]),
        "branch_token_configs": list(cfg["branch_token_configs"]),
        "seeds": [int(s) for s in cfg["seeds"]],
        "methods": methods,
        "table2": t2,
        "strategy_method": strategy_method,
        "selections": needed,
        **table4_grid(cfg, methods),
        "rr": rr,
    }


def table4_grid(cfg, methods):
    """Table 4's runs: every architecture of report.table4.architectures other than model.arch
    trains its warm-up, probes and the baseline / AG-REPA pair at report.table4.seeds;
    model.arch's row reuses the runs of Tables 2-3 (``methods``, which must include the pair)."""
    t4 = cfg["report"]["table4"]
    pair = [t4["baseline"], t4["method"]]
    for m in pair:
        if m not in cfg["methods"]:
            raise ValueError(f"config key report.table4: method {m!r} is not defined under methods")
    if cfg["methods"][pair[0]].get("layers") != [] or not cfg["methods"][pair[1]].get("selection"):
        raise ValueError("config key report.table4: baseline must be a method without layers and method a "
                         "selection method (its layers differ per backbone)")
    default = cfg["model"]["arch"]
    archs = list(t4["architectures"])
    if default in archs and not set(pair) <= set(methods):
        raise ValueError(f"config key report.table4: {default}'s row reuses the runs of Tables 2-3, "
                         f"which must include {pair}")
    if t4["token_config"] not in cfg["token_configs"]:
        raise ValueError(f"config key report.table4.token_config: {t4['token_config']!r} is not in token_configs")
    return {"t4_archs": archs, "t4_extra": [a for a in archs if a != default], "t4_pair": pair,
            "t4_seeds": [int(x) for x in t4["seeds"]], "t4_tc": t4["token_config"],
            "t4_strategy": cfg["methods"][pair[1]]["selection"]}


GRID = experiment_grid(config)
TCS = GRID["token_configs"]           # warm-up + probes (Table 1, Figure 1)
BTCS = GRID["branch_token_configs"]   # + Phase II branches (Tables 2 and 3)
SEEDS = GRID["seeds"]
METHODS = GRID["methods"]


def _alternatives(values):
    return "|".join(re.escape(str(v)) for v in values)


wildcard_constraints:
    tc="A|B",
    k=r"\d{5}",
    n=r"\d{5}",
    seed=r"\d+",
    method=_alternatives(list(dict.fromkeys(METHODS + GRID["t4_pair"] + GRID["rr"]["methods"]))),
    arch=_alternatives(GRID["t4_extra"]) if GRID["t4_extra"] else "none^",
    scale=r"\d+(\.\d+)?",
    table="r1|r2",
    strategy=_alternatives(agrepa_config.STRATEGIES),
    role="semantic|acoustic",
    stream="speech|audio|beats",


# --- resources ----------------------------------------------------------------------
def res(group, key):
    """resources.<group>.<key> of the config (resources.default when the group is absent)."""
    table = config["resources"]
    return table.get(group, table["default"])[key]


def mem_mb(group):
    """Memory request that grows with the attempt number, so a retry after OOM gets more."""
    return lambda wildcards, attempt: int(res(group, "mem_mb")) * attempt


def resources_of(group):
    return dict(mem_mb=mem_mb(group), runtime=res(group, "runtime"), gpu=res(group, "gpu"))


def config_hash(stage, **wildcards):
    """Hash of the config sections the stage's code reads (the CONFIG_KEYS its modules declare,
    agrepa.config.config_keys); a rule param, so editing one of them re-runs the rule.
    ``stage`` is the stage's CLI module, e.g. "agrepa.training.cli"; ``wildcards`` fill
    per-job keys such as methods.{method}."""
    return agrepa_config.section_hash(config, agrepa_config.config_keys(stage), **wildcards)


# --- paths that must exist on disk (paper scale) --------------------------------------
SKIP_PATH_CHECK_ENV = "AGREPA_SKIP_PATH_CHECK"


def _is_local_path(value):
    return isinstance(value, str) and (os.path.isabs(value) or value.startswith(("./", "../", "~")))


def configured_paths(cfg):
    """(config key, path) of every file or directory the config says is on local disk."""
    out = []
    data, teachers = cfg["data"], cfg["teachers"]
    if data["source"] == "real":
        for corpus in ("librispeech", "audioset"):
            out.append((f"data.{corpus}.root", data[corpus]["root"]))
    if teachers["acoustic"]["name"] == "beats":
        out.append(("teachers.acoustic.checkpoint", teachers["acoustic"]["checkpoint"]))
    if _is_local_path(teachers["semantic"]["model"]):
        out.append(("teachers.semantic.model", teachers["semantic"]["model"]))
    if cfg["tokens"]["speech"]["kind"] == "s3-onnx":
        out.append(("tokens.speech.onnx_path", cfg["tokens"]["speech"]["onnx_path"]))
    if "B" in cfg["token_configs"] and cfg["tokens"]["beats"]["kind"] == "beats-tokenizer":
        out.append(("tokens.beats.checkpoint", cfg["tokens"]["beats"]["checkpoint"]))
    if cfg["sample"]["vocoder"] == "vocos" and _is_local_path(cfg["sample"]["vocos_model"]):
        out.append(("sample.vocos_model", cfg["sample"]["vocos_model"]))
    if _is_local_path(cfg["eval"]["asr"]["model"]):
        out.append(("eval.asr.model", cfg["eval"]["asr"]["model"]))
    if cfg["eval"]["fad"]["embedding"] == "vggish":
        out.append(("eval.fad.vggish_checkpoint", cfg["eval"]["fad"]["vggish_checkpoint"]))
    mos = cfg["eval"]["mos"]
    if "utmos" in (mos["speech"], mos["audio"]):
        out.append(("eval.mos.utmos_checkpoint", mos["utmos_checkpoint"]))
    if "audiobox" in (mos["speech"], mos["audio"]):
        out.append(("eval.mos.aesthetics_checkpoint", mos["aesthetics_checkpoint"]))
    if cfg["eval"]["events"]["classifier"] == "beats":
        out.append(("eval.events.checkpoint", cfg["eval"]["events"]["checkpoint"]))
        out.append(("eval.events.labels_csv", cfg["eval"]["events"]["labels_csv"]))
    return out


def check_paths(cfg):
    """Fail at parse time, naming every configured path that is missing.

    Set AGREPA_SKIP_PATH_CHECK=1 to plan (snakemake -n) a paper-scale DAG on a
    machine without the datasets and checkpoints.
    """
    if os.environ.get(SKIP_PATH_CHECK_ENV, "") not in ("", "0"):
        logger.warning(f"{SKIP_PATH_CHECK_ENV} is set: configured paths are not checked")
        return
    missing = [f"  {key}: {value!r}" for key, value in configured_paths(cfg)
               if value is None or not os.path.exists(os.path.expanduser(str(value)))]
    if missing:
        raise FileNotFoundError(
            "configured paths do not exist (edit the config, pass --config KEY=PATH, or set "
            f"{SKIP_PATH_CHECK_ENV}=1 for a dry run):\n" + "\n".join(missing))


# --- the merged config every rule passes to agrepa ----------------------------------------
def write_merged_config(cfg):
    """Write the merged config to {results_dir}/config.yaml, only when its content changed.

    Rules pass it as `--config`; it is not a rule input, so rewriting it never
    re-runs anything by itself (per-rule `cfg` params carry the relevant sections).
    """
    path = res_path("config.yaml")
    text = "# Merged by the workflow from the Snakemake config; do not edit.\n" + \
        yaml.safe_dump(cfg, sort_keys=False)
    try:
        with open(path) as f:
            unchanged = f.read() == text
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        agrepa_io.write_text(path, text)
    return path


def final_targets():
    """Everything `rule all` builds."""
    out = [METRICS, TABLE1, TABLE2, TABLE3,
           vs_paper(TABLE2), vs_paper(TABLE3),
           FIG_SEED_SCATTER, PAIRED, SUMMARY, FIG_FOREST]
    out += expand([FIGURE1, FIG_LAYER_SCORES], tc=TCS) + expand(FIG_CONVERGENCE, tc=BTCS)
    if GRID["lsac_methods"] and GRID["lsac_seeds"]:
        out += [TABLE_L1] + expand([FIG_L2, FIG_LSAC_PROBE], tc=BTCS)
    out += [TABLE_R1, FIGURE_R3] + ([TABLE_R2] if config["report"]["rr"]["r2"]["in_all"] else [])
    if config["report"]["listening_test"]:
        out.append(LISTENING_TEST)
    if GRID["t4_archs"]:
        out += [TABLE4, vs_paper(TABLE4), FIG_TABLE4]
    return out


# --- warm start (agrepa/warm.py) ----------------------------------------------------
WARM_SERVER = {}
WARM_START_TIMEOUT_S = 120    # the server's imports take seconds; jobs start cold if it is not up by then


def start_warm_server():
    """onstart: with warm_start and the local executor, start the server that forks every
    `agrepa` job from one process with the libraries imported, and export its socket to the
    jobs. Not on SLURM: a job must run in its own allocation."""
    if not (config["warm_start"] and workflow.local_exec):
        return
    tmp = tempfile.mkdtemp(prefix="agrepa-warm-")
    path = os.path.join(tmp, "socket")
    log = res_path("logs", "warm_start.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agrepa.warm", path], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, start_new_session=True)
    deadline = time.monotonic() + WARM_START_TIMEOUT_S
    while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not os.path.exists(path):
        logger.warning(f"warm start: the server did not start (see {log}); every job starts cold")
        proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.environ[agrepa_warm.SOCKET_ENV] = path
    WARM_SERVER.update(proc=proc, dir=tmp)


def stop_warm_server():
    """onsuccess / onerror (the server also exits by itself when Snakemake does)."""
    if WARM_SERVER:
        os.environ.pop(agrepa_warm.SOCKET_ENV, None)
        WARM_SERVER["proc"].terminate()
        WARM_SERVER["proc"].wait(timeout=30)
        shutil.rmtree(WARM_SERVER["dir"], ignore_errors=True)
        WARM_SERVER.clear()
