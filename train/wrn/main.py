"""Train a Wide ResNet on CIFAR: ``python -m train.wrn.main --workdir runs/wrn --config.data_dir=/data/cifar``.

Config: ``--config`` (default ``train/wrn/configs/wrn28_10_cifar10.py``); override any field with
``--config.<field>=value`` (e.g. ``--config.q=3``, ``--config.regularizer=dropout``,
``--config.batch_size=64``, ``--config.dtype=bfloat16``). Multi-process: ``--coordinator_address
host:port --num_processes N --process_id i`` (or the ``JAX_*`` environment variables). Running the
same command again resumes from the workdir.
"""

from train.common import cli

cli.define_flags("train/wrn/configs/wrn28_10_cifar10.py")

if __name__ == "__main__":
  cli.run("train.wrn.train")
