"""An algorithm registered from outside the package (tests/support/toy_algorithm.py: FedProx, one file
plus its registry line) runs through the real command line: every process torchrun starts imports
--algorithm_module before it checks the options, and the run trains with that algorithm's trainer and
rules."""
import json

from fedbiobert.metrics import read_events
from tests.support.launch import REPO, TINY_MODEL, fedbiobert_run, torchrun

TOY = ["--algorithm_module", "tests.support.toy_algorithm", "--algorithm", "fedprox"]


def test_a_registered_algorithm_trains_end_to_end(tmp_path, small_corpus):
    output = tmp_path / "out"
    result = torchrun(1, [*TOY, *TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1",
                          "--n_comm_rounds", "2", "--num_batch", "4", "--lr", "2e-3", "--data_dir", str(small_corpus),
                          "--output_dir", str(output)], tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((output / "config.json").read_text())
    assert (config["algorithm"], config["algorithm_module"]) == ("fedprox", "tests.support.toy_algorithm")
    assert config["n_clients"] == 3  # FedProx's own default (FedAvg's is 4)
    events = read_events(output)
    rounds = [event for event in events if event["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["clients"] == [0, 1, 2] for r in rounds)
    # FedProx's client steps report their objective, the loss plus the proximal term, as local_loss
    # (FedAvg reports none): equal to the loss at a silo's first step (it starts at the global
    # weights), above it once the silo's weights have moved.
    steps = [event for event in events if event["event"] == "step" and event["role"] == "client"]
    assert len(steps) == 2 * 3 * 4
    assert all(step["local_loss"] >= step["global_loss"] for step in steps)
    assert sum(step["local_loss"] > step["global_loss"] for step in steps) >= 2 * 3 * 3
    assert all(r["local_loss"] > r["global_loss"] for r in rounds)
    assert (output / "round2").is_dir()


def test_the_launcher_imports_the_module_before_checking_the_options(tmp_path, monkeypatch):
    """fedbiobert-run checks once, in its own process, with the module's algorithm among the choices."""
    monkeypatch.chdir(REPO)  # the module is found from the working directory
    result = fedbiobert_run([*TOY, "--n_clients", "0", "--output_dir", str(tmp_path / "out")], timeout=120)
    assert result.returncode == 2
    assert "--n_clients 0 must be at least 1" in result.stderr and "invalid choice" not in result.stderr
