"""Train a model described by a YAML config.

    mpirun -np 2 python -m switchyard.train --config configs/demo.yaml [--set key=value ...]
    python -m switchyard.train --config configs/demo.yaml --set train.steps=10   # one process

Every key of the config can be overridden with --set (docs/configuration.md). Rank 0 shows
progress and writes the run directory (train.run_dir): metrics.csv, expert_load.csv,
tensorboard/, run.json, config.yaml and the plots (loss.png, expert_load.png); checkpoints
go to checkpoint.dir (docs/checkpoints.md).

Exit status: 0 when the run reached train.steps or stopped as asked (checkpoint.stop_at_step,
SIGINT/SIGTERM, each after saving a checkpoint); 2 for a config error; 3 when training cannot
go on (a non-finite loss, a checkpoint that does not load), with the reason printed.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config file (e.g. configs/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.steps=50 (repeatable)")
    args = parser.parse_args(argv)

    import switchyard
    from switchyard.config import ConfigError
    from switchyard.training.trainer import Trainer, TrainingError

    switchyard.init()
    try:
        cfg = switchyard.load_config(args.config, overrides=args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        # The message names the file, line and key; a traceback would only bury it. Every
        # rank reads the same file, so every rank stops here, cleanly.
        print(f"switchyard.train: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        Trainer(cfg, config_path=args.config).run()
    except TrainingError as e:
        # Every rank raised it together (no collective is left waiting): exit cleanly.
        if not e.echo:
            rank = switchyard.init().rank
            print(f"switchyard.train: rank {rank}: {e}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
