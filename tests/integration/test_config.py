"""Flags, config files and validation: every bad value gets one clear line naming it."""
import logging
import re

import pytest

from fedbiobert.config import (ConfigError, build_parser, parse_config, resolve_for_world, server_schedule_for,
                               validate_paths, validate_static, validate_world)
from fedbiobert.logs import warnings_from_rank0


def test_original_flags_and_aliases(tmp_path):
    config = parse_config(["--arch", "roberta", "--num_servers", "2", "--checkpoint_save_dir", str(tmp_path),
                           "--fedavg_embedding_head", "False", "--same_seed_process", "True",
                           "--fl_aggregate", "scheme=federated_average,weighting=uniform", "--gpu_ids", "0,1,2"])
    assert config.arch == "roberta" and config.num_device == 2 and config.output_dir == str(tmp_path)
    assert config.fedavg_embedding_head is False and config.same_seed_process is True
    assert config.aggregate_weighting == "uniform" and config.gpu_id_list == [0, 1, 2]


def test_text_meaningless_flags_are_accepted_with_a_notice(caplog):
    with caplog.at_level(logging.WARNING):
        parse_config(["--pn_normalize", "True", "--world_conf", "0,0,0"])
    assert "pn_normalize" in caplog.text and "world_conf" in caplog.text


@pytest.mark.parametrize("suffix,text", [
    (".yaml", "n_clients: 8\nlr: 0.001\noutput_dir: from_file\nfedavg_server_model: false\n"),
    (".toml", "n_clients = 8\nlr = 0.001\noutput_dir = 'from_file'\nfedavg_server_model = false\n"),
])
def test_config_file_values_are_overridden_by_the_command_line(tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    config = parse_config(["--config", str(path), "--lr", "0.002"])
    assert config.n_clients == 8 and config.lr == 0.002 and config.output_dir == "from_file"
    assert config.fedavg_server_model is False


def test_unknown_key_in_config_file_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("n_clinets: 8\n")
    with pytest.raises(ConfigError, match="n_clinets"):
        parse_config(["--config", str(path)])


def test_bad_boolean_is_one_line_without_usage(capsys):
    with pytest.raises(ConfigError, match="argument --on_cuda: 'maybe' is not a boolean") as error:
        parse_config(["--on_cuda", "maybe"])
    assert "\n" not in str(error.value) and capsys.readouterr().err == ""


@pytest.mark.parametrize("argv,fragment", [
    (["--participation_ratio", "0"], "--participation_ratio 0.0 is outside (0, 1]"),
    (["--participation_ratio", "1.5"], "outside (0, 1]"),
    (["--hidden_size", "130", "--num_attention_heads", "4"], "--hidden_size 130 is not divisible"),
    (["--num_client_encoder", "0"], "--num_client_encoder 0"),
    (["--end_lr", "1", "--lr", "0.1"], "--end_lr 1.0"),
    (["--n_clients", "0"], "--n_clients 0"),
    (["--max_len", "4"], "--max_len 4"),
    (["--fl_aggregate", "scheme=median"], "scheme 'median'"),
    (["--gpu_ids", "a,b"], "--gpu_ids 'a,b'"),
    (["--stop_after_round", "11", "--n_comm_rounds", "10"], "--stop_after_round 11"),
])
def test_static_validation_names_the_value(argv, fragment):
    with pytest.raises(ConfigError) as error:
        validate_static(parse_config(argv))
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("world,argv,fragment", [
    (3, ["--num_device", "3"], "leave no client process"),
    (3, ["--num_device", "2"], "every server needs at least one client process"),
    (6, ["--n_clients", "2"], "--n_clients 2"),
    (3, ["--on_cuda", "True"], "CUDA is not available"),
    (3, ["--gpu_ids", "0,1"], "--gpu_ids '0,1' has 2 id(s) but 3 processes"),
])
def test_world_validation_names_the_value(world, argv, fragment):
    with pytest.raises(ConfigError) as error:
        validate_world(parse_config(argv), world_size=world, local_world_size=world, cuda_available=False)
    assert fragment in str(error.value)


def test_path_validation(tmp_path, small_corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--data_dir", str(tmp_path / "missing")], "--data_dir"),
        (["--data_dir", str(empty)], "--data_dir"),
        (["--data_dir", str(small_corpus), "--output_dir", str(a_file)], "is not a directory"),
        (["--data_dir", str(small_corpus), "--tokenizer", str(tmp_path / "nope.txt")], "--tokenizer"),
        (["--data_dir", str(small_corpus), "--init_from", str(empty)], "has no config.json"),
        (["--data_dir", str(small_corpus), "--output_dir", str(empty), "--from_checkpoint", "True"],
         "cannot resume"),
    ]
    for argv, fragment in cases:
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
            validate_paths(parse_config(argv))


def test_init_from_layer_mismatch_is_named(tmp_path, small_corpus):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 12}')
    config = parse_config(["--data_dir", str(small_corpus), "--init_from", str(tmp_path),
                           "--num_client_encoder", "2", "--num_server_encoder", "2"])
    with pytest.raises(ConfigError, match="= 4 layers, but --init_from .* has 12"):
        validate_paths(config)


def test_centralized_implies_one_client():
    config = parse_config(["--algorithm", "centralized"])
    assert config.n_clients == 1 and config.num_servers == 0
    validate_static(config)
    validate_world(config, world_size=1, local_world_size=1, cuda_available=False)
    assert parse_config([]).n_clients == 4
    with pytest.raises(ConfigError, match="--n_clients 3 must be 1 for --algorithm centralized"):
        validate_static(parse_config(["--algorithm", "centralized", "--n_clients", "3"]))


def test_a_participation_ratio_that_rounds_to_no_client_says_so_once(caplog):
    with caplog.at_level(logging.WARNING):
        config = parse_config(["--n_clients", "4", "--participation_ratio", "0.1"])
        validate_static(config)
    assert config.clients_per_round == 1
    assert [record.getMessage() for record in caplog.records] == [
        "--participation_ratio 0.1 of --n_clients 4 rounds to 0 clients a round; sampling 1 client each round"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        validate_static(parse_config(["--n_clients", "4", "--participation_ratio", "0.2"]))
    assert not caplog.records


@pytest.mark.parametrize("world,servers,expected", [(2, 1, "parallel"), (3, 1, "sequential"), (4, 2, "parallel")])
def test_fedbert_server_schedule_auto_fits_the_world(world, servers, expected):
    config = parse_config(["--algorithm", "fedbert", "--num_device", str(servers), "--n_clients", "4"])
    assert config.server_schedule == "auto"
    validate_world(config, world_size=world, local_world_size=world, cuda_available=False)
    assert server_schedule_for(config, world) == expected
    assert resolve_for_world(config, world).server_schedule == expected


@pytest.mark.parametrize("argv,world,fragment", [
    (["--server_schedule", "parallel"], 3, "or use --server_schedule sequential with --num_device 1"),
    (["--num_device", "2"], 5, "--num_device 2 must be 1 (or launch 4 processes"),
])
def test_fedbert_schedule_errors_name_the_fix(argv, world, fragment):
    config = parse_config(["--algorithm", "fedbert", "--n_clients", "4", *argv])
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        validate_world(config, world_size=world, local_world_size=world, cuda_available=False)


def test_help_says_each_default_once():
    text = build_parser().format_help()
    entries = re.split(r"\n  (?=-)", text)[1:]
    assert len(entries) > 50
    for entry in entries:
        assert entry.count("default") <= 1, entry


def test_startup_warnings_print_on_rank_0_only(caplog):
    for rank, expected in ((0, 1), (2, 0)):
        caplog.clear()
        with caplog.at_level(logging.WARNING), warnings_from_rank0(rank):
            parse_config(["--pn_normalize", "True"])
            logging.getLogger("fedbiobert.x").error("errors always show")
        warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
        assert len(warnings) == expected and "errors always show" in caplog.text


def test_an_algorithm_module_that_cannot_be_imported_is_one_line():
    with pytest.raises(ConfigError, match=r"--algorithm_module 'no_such_package.algo' cannot be imported \(No module "
                       r"named 'no_such_package'\) \(accepted: a dotted module path") as error:
        parse_config(["--algorithm_module", "no_such_package.algo"])
    assert "\n" not in str(error.value)


def test_an_unknown_algorithm_in_a_config_file_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algorithm: fedsgd\n")
    with pytest.raises(ConfigError, match=r"--algorithm 'fedsgd' is not supported \(accepted: fedbiobert, fedbert, "
                       "fedavg, centralized"):
        validate_static(parse_config(["--config", str(path)]))


def test_register_refuses_a_taken_name_and_what_is_not_an_algorithm():
    from fedbiobert.algorithms import register
    from fedbiobert.algorithms.fedavg import FedAvg

    class Impostor(FedAvg):
        name = "fedavg"

    with pytest.raises(ValueError, match="the name 'fedavg' is taken by fedbiobert.algorithms.fedavg.FedAvg"):
        register(Impostor)
    with pytest.raises(TypeError, match="accepted is an Algorithm subclass with a non-empty `name`"):
        register(object)
    assert register(FedAvg) is FedAvg  # the same class again: nothing changes


def test_the_checks_read_an_algorithms_rules_from_its_class(monkeypatch):
    """A split algorithm of the test's (head on the client only, two client layers at least) gets the
    split algorithms' defaults and checks, and its own, without a line of config naming it."""
    from fedbiobert.algorithms import REGISTRY, SplitAlgorithm

    class ClientHeadOnly(SplitAlgorithm):
        name, summary = "clienthead", "a test's split algorithm"
        head_placements, min_client_layers, min_client_layers_why = ("client",), 2, "two layers stay home"

    monkeypatch.setitem(REGISTRY, ClientHeadOnly.name, ClientHeadOnly)
    config = parse_config(["--algorithm", "clienthead", "--num_client_encoder", "2"])
    validate_static(config)
    assert config.num_servers == 1 and config.is_split
    assert "clienthead (a test's split algorithm)" in " ".join(build_parser().format_help().split())
    for argv, fragment in [
        (["--head_placement", "server"], "--head_placement server is not supported by --algorithm clienthead "
                                         "(accepted: client)"),
        (["--num_client_encoder", "1"], "--num_client_encoder 1 must be at least 2 for --algorithm clienthead "
                                        "(two layers stay home)"),
        (["--num_device", "0"], "--num_device 0 must be at least 1 for --algorithm clienthead"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            validate_static(parse_config(["--algorithm", "clienthead", "--num_client_encoder", "2", *argv]))
