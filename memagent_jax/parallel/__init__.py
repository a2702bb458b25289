"""Many processes: joining the cluster from the environment, and agreements between the processes of a run."""
