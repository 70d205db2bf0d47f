"""A folder laid out as SambaNova generative_data_prep writes it trains, evaluates and carries its tokenizer."""
from __future__ import annotations

import re
import shutil

import yaml

from tools.cli import main
from train_helpers import ROOT, random_tokens

# the keys generative_data_prep writes, and nothing else; its vocab_size (100) is below the largest id the
# rows hold (127, as Llama 3's 128000 is below its 128009): the model's vocabulary (128) is the bound
REFERENCE_METADATA = {"max_batch_size_dev": 8, "max_batch_size_train": 8, "max_seq_length": 16,
                      "number_of_dev_files": 1, "number_of_test_files": 0, "number_of_training_files": 2,
                      "token_type_ids": True, "vocab_size": 100,
                      "tokenizer_model_type": "<class 'transformers.models.llama.configuration_llama.LlamaConfig'>"}


def test_reference_layout_folder_trains_evaluates_and_checkpoints_carry_its_tokenizer(fixture_pefs, tmp_path,
                                                                                       capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.yaml").write_text(yaml.safe_dump(REFERENCE_METADATA))
    for seed, name in enumerate(("train_1_of_2.hdf5", "train_2_of_2.hdf5", "dev_1_of_1.hdf5")):
        random_tokens(data / name, 8, seed=seed)
    shutil.copytree(ROOT / "tests" / "data" / "gpt2_tokenizer", data / "tokenizer")
    assert main(["run", fixture_pefs["llama-tiny"], "--data", str(data), "--num-steps", "4", "--eval-every", "2",
                 "--save-every", "4", "--save-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"Evaluation loss: [\d.]+", out)) == 2
    checkpoint = tmp_path / "run" / "checkpoint-4"
    for name in ("vocab.json", "merges.txt"):
        assert (checkpoint / name).read_bytes() == (data / "tokenizer" / name).read_bytes()
