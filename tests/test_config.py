from pathlib import Path

import pytest
import yaml

from biolm.core.config import load_yaml, parse_splitratio, resolve
from biolm.core.errors import BiolmError, ConfigError
from biolm.core.plugins import get_registry

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def saluki():
    return get_registry().plugin("saluki")


def test_reference_tokenize_finetune_config_loads_unchanged(saluki):
    data = load_yaml(DATA / "ref_tokenize_fine-tune.yaml")
    cfg = resolve("fine-tune", saluki, data)
    src = cfg.finetuning_source
    assert src.filepath == "fine-tuning_data_file.txt"
    assert src.columnsep == "\t" and src.tokensep == "," and src.specifiersep is None
    assert src.crossvalidation is False and src.splitratio is None and src.splitpos is None
    assert src.devsplits is None and src.testsplits is None
    assert cfg.tokenization.lefttailing is True and cfg.tokenization.samplesize is None
    tok = resolve("tokenize", saluki, data)
    assert tok.tokenizing_source.filepath == "tokenizing_data_file.txt"


def test_reference_predict_interpret_config_loads_unchanged(saluki):
    data = load_yaml(DATA / "ref_predict_interpret.yaml")
    cfg = resolve("interpret", saluki, data)
    assert cfg.inference_source.labelpos == 3 and cfg.inference_source.seqpos == 2
    assert cfg.settings.training.blocksize == 12288 and cfg.settings.training.batchsize == 8
    assert cfg.settings.training.scaling == "log"
    assert cfg.settings.data_preprocessing.centertoken is None
    assert cfg.settings.environment.ngpus == 1
    assert cfg.looscores.handletokens == "remove" and cfg.looscores.replacementdict is None
    assert cfg.inference_model.pretrainedmodel == "path/to/fine-tuned-model"


def test_precedence_cli_over_yaml_over_plugin_over_core(saluki):
    # core default batchsize 32, saluki default 64, YAML 8, CLI 16
    assert resolve("fine-tune", saluki, {}).settings.training.batchsize == 64
    assert resolve("fine-tune", None, {}).settings.training.batchsize == 32
    y = {"settings": {"training": {"batchsize": 8}}}
    assert resolve("fine-tune", saluki, y).settings.training.batchsize == 8
    assert resolve("fine-tune", saluki, y, {"settings.training.batchsize": "16"}).settings.training.batchsize == 16


def test_cli_can_turn_off_a_flag_set_in_yaml(saluki):
    y = {"tokenization": {"lefttailing": True}}
    assert resolve("fine-tune", saluki, y, {"tokenization.lefttailing": False}).tokenization.lefttailing is False


@pytest.mark.parametrize("value, expected", [("85,15", (85, 15)), ([85, 15], (85, 15)), ("70/20/10", (70, 20, 10)), ("70,20,10", (70, 20, 10))])
def test_splitratio_forms(value, expected):
    assert parse_splitratio(value, "splitratio") == expected


def test_splitratio_unquoted_yaml_form(saluki):
    data = yaml.safe_load("fine-tuning data source:\n  splitratio: 85,15\n")
    assert resolve("fine-tune", saluki, data).finetuning_source.splitratio == (85, 15)


@pytest.mark.parametrize("bad", ["85,10", "50", "a,b", [100, 0]])
def test_splitratio_errors(bad):
    with pytest.raises(ConfigError, match="splitratio"):
        parse_splitratio(bad, "splitratio")


@pytest.mark.parametrize("unset", [None, "None", "none", "", "null", False])
def test_not_set_spellings(saluki, unset):
    data = {"fine-tuning data source": {"specifiersep": unset, "splitpos": unset}}
    cfg = resolve("fine-tune", saluki, data)
    assert cfg.finetuning_source.specifiersep is None and cfg.finetuning_source.splitpos is None


def test_none_string_is_never_a_literal_separator_or_path(saluki):
    data = {"fine-tuning data source": {"tokensep": "None"}, "inference model": {"pretrainedmodel": "None"}}
    cfg = resolve("fine-tune", saluki, data)
    assert cfg.finetuning_source.tokensep is None and cfg.inference_model.pretrainedmodel is None


@pytest.mark.parametrize("sep", ["\t", " ", "  "])
def test_whitespace_separators_are_values_not_unset(saluki, sep):
    data = {"fine-tuning data source": {"tokensep": sep, "columnsep": sep + "|"}}
    cfg = resolve("fine-tune", saluki, data)
    assert cfg.finetuning_source.tokensep == sep and cfg.finetuning_source.columnsep == sep + "|"
    cli = resolve("fine-tune", saluki, {}, {"finetuning_source.tokensep": sep})
    assert cli.finetuning_source.tokensep == sep


def test_seed_must_fit_32_bits(saluki):
    for bad in (-3, 2**70):
        with pytest.raises(ConfigError, match="seed"):
            resolve("fine-tune", saluki, {"seed": bad})
    assert resolve("fine-tune", saluki, {"seed": 2**32 - 1}).seed == 2**32 - 1


def test_unknown_key_suggests(saluki):
    with pytest.raises(ConfigError) as e:
        resolve("fine-tune", saluki, {"settings": {"training": {"batchsise": 3}}}, source="x.yaml")
    msg = str(e.value)
    assert "x.yaml" in msg and "settings.training.batchsise" in msg and "batchsize" in msg


def test_unknown_section_suggests(saluki):
    with pytest.raises(ConfigError, match="fine-tuning data source"):
        resolve("fine-tune", saluki, {"fine-tunning data source": {"filepath": "x"}})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"settings": {"training": {"batchsize": "many"}}}, "batchsize"),
        ({"settings": {"training": {"batchsize": 0}}}, "batchsize"),
        ({"settings": {"training": {"scaling": "log10"}}}, "scaling"),
        ({"looscores": {"handletokens": "delete"}}, "handletokens"),
        ({"fine-tuning data source": {"crossvalidation": 1}}, "crossvalidation"),
        ({"fine-tuning data source": {"labelpos": 0}}, "labelpos"),
        ({"model": {"filters": 1.5}}, "filters"),
        ({"settings": {"training": {"lr": "fast"}}}, "lr"),
    ],
)
def test_type_and_range_errors_name_the_key(saluki, data, key):
    with pytest.raises(ConfigError) as e:
        resolve("fine-tune", saluki, data)
    assert key in str(e.value)


def test_each_mode_reads_only_its_own_source(saluki):
    data = {
        "fine-tuning data source": {"filepath": "train.txt", "seqpos": 5},
        "inference data source": {"filepath": "infer.txt", "seqpos": 2},
    }
    cfg = resolve("interpret", saluki, data)
    assert cfg.inference_source.filepath == "infer.txt" and cfg.inference_source.seqpos == 2
    assert resolve("fine-tune", saluki, data).finetuning_source.seqpos == 5


def test_scientific_notation_and_aliases(saluki):
    data = {"settings": {"training": {"learningrate": "1e-4", "epochs": 3}}}
    cfg = resolve("fine-tune", saluki, data)
    assert cfg.settings.training.lr == pytest.approx(1e-4) and cfg.settings.training.nepochs == 3


def test_settings_keys_accepted_under_other_subsection(saluki):
    cfg = resolve("fine-tune", saluki, {"settings": {"data pre-processing": {"scaling": "minmax"}, "training": {"general": {"nepochs": 4}}}})
    assert cfg.settings.training.scaling == "minmax" and cfg.settings.training.nepochs == 4


def test_replacementdict_json_string(saluki):
    data = {"looscores": {"replacementdict": '{"A": ["a", "c"], "a": ["A"]}'}}
    assert resolve("interpret", saluki, data).looscores.replacementdict == {"A": ["a", "c"], "a": ["A"]}


def test_outputpath_defaults_to_data_file_stem(saluki):
    cfg = resolve("fine-tune", saluki, {"fine-tuning data source": {"filepath": "data/my_rna.txt.gz"}})
    assert cfg.outputpath == str(Path("data/my_rna"))


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("outputpath: x\nsettings:\n  training: [1,\n")
    with pytest.raises(BiolmError, match=r"bad.yaml:\d+:\d+"):
        load_yaml(p)


def test_devsplits_list_of_lists(saluki):
    data = {"fine-tuning data source": {"crossvalidation": True, "splitpos": 2, "devsplits": [[1, 2], [3]], "testsplits": "[[4], [5]]"}}
    src = resolve("fine-tune", saluki, data).finetuning_source
    assert src.devsplits == [["1", "2"], ["3"]] and src.testsplits == [["4"], ["5"]] and src.crossvalidation is True


def test_encoding_defaults_to_the_plugins_tokenizer_and_mismatch_is_an_error():
    reg = get_registry()
    assert resolve("tokenize", reg.plugin("geneformer"), {}).tokenization.encoding == "generank"
    assert resolve("tokenize", reg.plugin("saluki"), {}).tokenization.encoding == "atomic"
    with pytest.raises(ConfigError, match="tokenization.encoding"):
        resolve("tokenize", reg.plugin("geneformer"), {"tokenization": {"encoding": "atomic"}})
