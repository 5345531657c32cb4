"""The original FedBioBERT command line (its README's `deepspeed --hostfile hostfile run.py ...`, with the
launcher's --hostfile also written after run.py, and the --local_rank=N DeepSpeed appends) is accepted
as written: flags that mean nothing here say so once; --data picks a corpus mix by name; --tot_files
limits the corpus to N files; --gpu_ids maps every rank of the world to a GPU."""
import logging

import pytest

from fedbiobert.comm.launch_env import LaunchInfo
from fedbiobert.config import ConfigError, corpus_files_for, parse_config, validate_static, validate_world
from fedbiobert.session import gpu_index
from tests.conftest import PRETRAIN

ORIGINAL = ["--local_rank=0", "--hostfile", "hostfile", "--data", "wikitext-pubmed", "--tot_files", "18",
            "--world_conf", "0,1,2,3,4", "--complex_arch", "False", "--pn_normalize", "False", "--arch", "bert",
            "--num_client_encoder", "6", "--num_server_encoder", "6", "--n_clients", "4",
            "--participation_ratio", "1.0", "--n_comm_rounds", "10", "--n_local_rounds", "1", "--num_batch", "100",
            "--batch_size", "16", "--max_len", "128", "--lr", "5e-4", "--end_lr", "1e-6", "--warmup_ratio", "0.06",
            "--fedavg_embedding_head", "True", "--fedavg_server_model", "True", "--same_seed_process", "True",
            "--manual_seed", "42", "--partition_data", "by_file", "--num_device", "1", "--on_cuda", "True",
            "--gpu_ids", "0,0,1,2,3", "--from_checkpoint", "False", "--data_dir", str(PRETRAIN)]


def test_the_original_command_parses_with_one_notice_per_meaningless_flag(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        config = parse_config([*ORIGINAL, "--checkpoint_save_dir", str(tmp_path / "out")])
    validate_static(config)
    for flag in ("--hostfile", "--local_rank", "--world_conf", "--complex_arch", "--pn_normalize"):
        assert sum(record.getMessage().startswith(flag) for record in caplog.records) == 1, flag
    assert "launcher's option" in caplog.text
    assert (config.data, config.tot_files, config.on_cuda, config.fedavg_embedding_head) == (
        "wikitext-pubmed", 18, True, True)
    # 1 server + 4 client processes on a 4-GPU machine: server and first client share GPU 0
    validate_world(config, world_size=5, local_world_size=5, cuda_available=True, cuda_device_count=4)
    assert [gpu_index(config, LaunchInfo(rank, 5, rank, 5)) for rank in range(5)] == [0, 0, 1, 2, 3]


def test_data_names_a_corpus_mix_and_tot_files_limits_it(caplog):
    with caplog.at_level(logging.WARNING):
        files = corpus_files_for(parse_config(["--data", "wikitext-pubmed", "--tot_files", "18",
                                               "--data_dir", str(PRETRAIN)]), notify=True)
    assert [file.name for file in files] == ["general_wikitext2_test.txt", "pubmed_genia_abstracts.txt",
                                             "pubmed_hoc_abstracts.txt", "pubmedqa_contexts.txt"]
    assert "the original's corpus of that name is not shipped" in caplog.text
    assert "--tot_files 18 but 4 corpus file(s) were found: using all 4" in caplog.text
    limited = corpus_files_for(parse_config(["--tot_files", "2", "--data_dir", str(PRETRAIN)]))
    assert [file.name for file in limited] == ["clinical_mtsamples_notes.txt", "general_wikitext2_test.txt"]


@pytest.mark.parametrize("argv,fragment", [
    (["--data", "wikitext-mimic"], "--data 'wikitext-mimic': no file of --data_dir .* has 'mimic' in its name"),
    (["--data", "-"], "--data '-' names no corpus"),
])
def test_a_data_name_that_selects_nothing_is_one_line(argv, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        corpus_files_for(parse_config([*argv, "--data_dir", str(PRETRAIN)]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("argv,fragment", [
    (["--tot_files", "0"], "--tot_files 0 must be at least 1"),
    (["--backend", "nccl"], "--backend nccl needs --on_cuda True"),
    (["--backend", "gloo", "--on_cuda", "True"], "--backend gloo carries CPU tensors only"),
])
def test_static_checks_of_the_new_options(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate_static(parse_config(argv))


def test_a_world_too_small_for_the_options_is_one_line():
    with pytest.raises(ConfigError, match=r"leave no client process in a world of 1 \(launch at least 2 processes\)"):
        validate_world(parse_config(["--num_device", "1"]), 1, 1, cuda_available=False)
    with pytest.raises(ConfigError, match="has 3 id.* but 2 processes run on this node and 4 in the world"):
        validate_world(parse_config(["--gpu_ids", "0,1,2"]), 4, 2, cuda_available=False)


def test_the_seed_readmes_arch_spelling_is_accepted_in_any_case(tmp_path):
    """The original README writes `--arch Roberta`: the model family is named in any case, on the
    command line and in a --config file, and is kept lower-case."""
    argv = [*ORIGINAL, "--checkpoint_save_dir", str(tmp_path / "out")]
    argv[argv.index("--arch") + 1] = "Roberta"
    config = parse_config(argv)
    validate_static(config)
    assert config.arch == "roberta"
    config_file = tmp_path / "options.yaml"
    config_file.write_text("arch: Roberta\n", encoding="utf-8")
    assert parse_config(["--config", str(config_file)]).arch == "roberta"
    with pytest.raises(ConfigError, match="argument --arch: invalid choice: 'gpt2'"):
        parse_config(["--arch", "GPT2"])
