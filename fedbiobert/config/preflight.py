"""Everything a run checks before any process group forms, in one place: run.py calls it on every rank,
fedbiobert-run once before it starts any process. Raises ConfigError (one line naming the value)."""
from __future__ import annotations

from fedbiobert.config import (Config, ConfigError, parse_config, resolve_for_world, validate_paths,
                               validate_static, validate_world)
from fedbiobert.config.warm_start import adopt_init_from


def check_run(argv: list[str] | None, world_size: int, local_world_size: int) -> tuple[Config, dict | None]:
    """The run's config (with what depends on the world resolved, e.g. --server_schedule auto) and the
    state it resumes from (None for a fresh run)."""
    config = parse_config(argv)
    validate_static(config)
    validate_world(config, world_size, local_world_size, *_devices(config, world_size, local_world_size))
    config = resolve_for_world(config, world_size)
    validate_paths(config)  # reads every corpus file (about 0.1 s for 28 MB): after the cheap checks
    config = adopt_init_from(config)  # a warm start's shape and tokenizer are the checkpoint's
    from fedbiobert.checkpoint import load_resume_for
    try:
        resume = load_resume_for(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return config, resume


def _devices(config: Config, world_size: int, local_world_size: int) -> tuple[bool, int, bool]:
    """(CUDA available, GPUs this process sees, GPUs bound per srun task) for validate_world; on CPU
    (--on_cuda False) none of them is read (torch.cuda is not touched)."""
    if not config.on_cuda:
        return False, 0, False
    from fedbiobert.comm.launch_env import gpus_bound_per_task
    return _cuda_available(), _cuda_device_count(), gpus_bound_per_task(world_size, local_world_size)


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _cuda_device_count() -> int:
    import torch
    return torch.cuda.device_count()
