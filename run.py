"""The entry users call: `torchrun --nproc_per_node 3 run.py ...` (also mpirun, srun, deepspeed).

Everything happens in fedbiobert/run.py (`python -m fedbiobert.run` is the same without this file).
"""
import sys

from fedbiobert.run import main

if __name__ == "__main__":
    sys.exit(main())
