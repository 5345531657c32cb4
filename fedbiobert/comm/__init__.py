"""Everything that touches torch.distributed, one concern per module.

- `launch_env`: rank, world and rendezvous address from the launcher's variables (torchrun, DeepSpeed,
  Open MPI, MPICH / Intel MPI, SLURM).
- `groups`: the process groups of a run (`init_distributed`, `ProcessGroups`).
- `messages`: the wire format of one message (a fixed-size header, then its tensors).
- `channel`: point-to-point messages between a server and its client processes, and the protocol
  that keeps them free of deadlock; `sends` completes sends in the background.
- `collectives`: the round end's all-reduces, gathers and barriers.
- `accounting`: bytes per direction and kind; `wan`: the emulated wide-area network; `errors`: PeerError.
"""
