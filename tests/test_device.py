"""Device choices: what `train.amp: auto` and `train.channels_last: auto` resolve to, Make's job count."""

import pytest
import torch

from pipeline import device as device_mod
from pipeline.device import make_jobs, resolve_amp, resolve_channels_last

CPU, GPU = torch.device("cpu"), torch.device("cuda")   # a device object needs no GPU


def _cpu_bf16(monkeypatch, native: bool):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_amp_auto_is_bf16_where_the_cpu_has_bf16_instructions_else_off(monkeypatch):
    _cpu_bf16(monkeypatch, True)
    assert resolve_amp("auto", CPU) == torch.bfloat16
    _cpu_bf16(monkeypatch, False)
    assert resolve_amp("auto", CPU) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)    # AMX alone will do
    assert resolve_amp("auto", CPU) == torch.bfloat16


def test_amp_auto_on_a_gpu_asks_for_native_bf16_not_emulated(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or False)      # a pre-Ampere card (T4, V100): bf16 only emulated
    assert resolve_amp("auto", GPU) is None and asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert resolve_amp("auto", GPU) == torch.bfloat16


def test_explicit_amp_settings_and_their_errors():
    assert resolve_amp("off", GPU) is None and resolve_amp("bf16", CPU) == torch.bfloat16
    assert resolve_amp("fp16", GPU) == torch.float16
    with pytest.raises(RuntimeError, match="fp16 needs CUDA"):
        resolve_amp("fp16", CPU)
    with pytest.raises(ValueError, match="auto, off, bf16, fp16"):
        resolve_amp("fp8", CPU)


def test_channels_last_auto_follows_the_device(monkeypatch):
    assert resolve_channels_last("auto", GPU) is True
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert resolve_channels_last("auto", CPU) is True
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert resolve_channels_last("auto", CPU) is False
    assert resolve_channels_last(False, GPU) is False and resolve_channels_last(True, CPU) is True


def test_the_config_takes_auto_and_the_booleans_for_both_keys(tiny_cfg_dict):
    from pipeline.config import ConfigError, load_config

    cfg = load_config(None, dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], amp="auto", channels_last="auto")))
    assert (cfg.train.amp, cfg.train.channels_last) == ("auto", "auto")
    cfg = load_config(None, dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], amp=False, channels_last=True)))
    assert (cfg.train.amp, cfg.train.channels_last) == ("off", True)     # `amp: off` unquoted is YAML's false
    with pytest.raises(ConfigError, match="train.channels_last"):
        load_config(None, dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], channels_last="sometimes")))


@pytest.mark.parametrize("flags, jobs", [("", 1), (" -j2 --jobserver-auth=fifo:/tmp/x", 2), ("-j 5", 5),
                                         (" -j --jobserver-auth=3,4", 1), ("w -- GPUS=0", 1)])
def test_make_jobs_reads_the_job_count_from_makeflags(flags, jobs):
    assert make_jobs({"MAKEFLAGS": flags}) == jobs


def test_make_jobs_share_the_usable_cores_not_every_core(monkeypatch):
    threads = []
    monkeypatch.setenv("MAKEFLAGS", " -j2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device_mod, "usable_cpus", lambda: 6)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    device_mod.share_cores_with_make_jobs()
    assert threads == [3]
