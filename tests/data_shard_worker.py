"""One process of tests/test_data_multiprocess.py: joins the run from the environment, reads the phase's
file source through the training pipeline for one epoch, and writes the record indices it drew."""

import json
import sys

from memagent_jax.parallel import cluster


def main(pattern: str, out: str) -> None:
    cluster.initialize()  # jax.distributed from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
    import jax

    from memagent_jax.data.mixture import MixtureSource
    from memagent_jax.data.pipeline import make_pipeline
    from memagent_jax.data.sources import FileSource, parse_sources

    [spec] = parse_sources(({"path": pattern},), "config.rl.sources")
    source = MixtureSource([FileSource(spec, "config.rl.sources[0]")])
    batches = make_pipeline(source, 4, seed=3, num_epochs=1)
    drawn = [sample.meta["index"] for batch in batches for sample in batch]
    with open(out, "w") as f:
        json.dump({"process": jax.process_index(), "devices": jax.local_device_count(), "drawn": drawn}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
