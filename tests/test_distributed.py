"""How a process finds its place in a multi-process run from the environment."""

import pytest

from memagent_jax.parallel.cluster import Cluster, cluster_from_env, first_host, initialize


def test_no_variables_is_a_single_process():
    assert cluster_from_env({}) == Cluster("single")
    assert initialize(Cluster("single")).kind == "single"  # nothing to join


def test_explicit_variables_name_coordinator_count_id_and_devices():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
           "JAX_LOCAL_DEVICE_IDS": "0,1"}
    cluster = cluster_from_env(env)
    assert cluster == Cluster("explicit", "10.0.0.1:1234", 4, 3, (0, 1))
    assert "process 3 of 4" in cluster.describe()


@pytest.mark.parametrize("nodelist, host", [
    ("gpu[03-05,9]", "gpu03"), ("node7", "node7"), ("a[1],b[2-3]", "a1"), ("h-1,h-2", "h-1")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_tasks_become_processes_with_the_first_node_as_coordinator():
    env = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_NODELIST": "dgx[12-19]"}
    assert cluster_from_env(env) == Cluster("slurm", "dgx12:8476", 8, 5)
    env["MEMAGENT_COORDINATOR_PORT"] = "9000"
    assert cluster_from_env(env).coordinator_address == "dgx12:9000"
    # One task: a plain single-process run inside an allocation.
    assert cluster_from_env({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1"}).kind == "single"


def test_explicit_variables_win_over_slurm():
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_NODELIST": "n[1-2]",
           "JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    assert cluster_from_env(env).kind == "explicit"


def test_tpu_pod_workers_leave_the_rest_to_the_tpu_runtime():
    cluster = cluster_from_env({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3", "TPU_WORKER_ID": "2"})
    assert (cluster.kind, cluster.num_processes, cluster.process_id) == ("tpu", 4, 2)
    assert cluster_from_env({"TPU_WORKER_HOSTNAMES": "t0"}).kind == "single"  # a single-host slice


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID missing"),
    ({"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "not an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "process_id"),
    ({"JAX_COORDINATOR_ADDRESS": "hostonly", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
      "JAX_LOCAL_DEVICE_IDS": "0;1"}, "comma-separated"),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, "NODELIST"),
])
def test_bad_environments_are_named(env, message):
    with pytest.raises(ValueError, match=message):
        cluster_from_env(env)
