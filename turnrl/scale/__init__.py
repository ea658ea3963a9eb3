"""From one process to a cluster: where rollouts are sampled (:mod:`.sampler`, Ray
rollout workers) and where the update runs (one process, or an FSDP group).

The ``[scale]`` config section picks them; absent, everything runs in this process."""
