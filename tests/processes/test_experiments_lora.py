"""`python -m fedbiobert.experiments lora --preset tiny`: both parts run for real (fine-tunes of the packaged
general model, a full-weight and a LoRA continual pre-training) and write the three files; --resume reruns
nothing."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA

GENERAL_MODEL = REPO / "models" / "minilm-l6"


@pytest.mark.slow
@pytest.mark.skipif(not (GENERAL_MODEL / "config.json").is_file() or not SHARED_DATA.is_dir(),
                    reason="needs the general model (bash scripts/get_base_model.sh) and ../shared/data")
def test_the_tiny_preset_writes_its_three_files_and_resumes(tmp_path):
    out = tmp_path / "lora"
    command = [sys.executable, "-m", "fedbiobert.experiments", "lora", "--preset", "tiny", "--out", str(out),
               "--data_root", str(SHARED_DATA), "--threads", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"results.json", "results.md", "lora.png"} <= {path.name for path in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert all(row["status"] == "ok" for row in results["finetune"] + results["pretrain"])
    full, lora = results["pretrain"]
    assert lora["lora"]["rank"] == 8 and full["lora"] is None and lora["tokens"] == full["tokens"]
    assert lora["exchange_upload_bytes_per_silo"] < 0.2 * full["exchange_upload_bytes_per_silo"]
    again = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "fine-tune: fedavg" not in again.stdout and "pre-train:" not in again.stdout
