"""The vLLM and SGLang fakes read their command lines as the pinned engines do (vLLM v0.29.0,
SGLang v0.5.20): a flag they do not know exits 2, --dtype and --quantization take the
engines' own choices; and every command line the operator writes (the golden files) still
starts them, mapped to the fakes by the local node's image table."""

from pathlib import Path

import pytest
import yaml
from modelship_testbed.engine_fake import sglang, vllm
from modelship_testbed.localnode.images import ImageMap

GOLDEN = Path(__file__).parent / "golden"


def engine_container(golden: str) -> dict:
    for doc in yaml.safe_load_all((GOLDEN / golden).read_text()):
        if doc and doc.get("kind") == "Deployment":
            return doc["spec"]["template"]["spec"]["containers"][0]
    raise AssertionError(f"no Deployment in {golden}")


def fake_argv(golden: str, module: str) -> list[str]:
    c = engine_container(golden)
    argv = ImageMap().resolve(c["image"], c.get("command"), c.get("args"), "127.0.0.1").argv
    assert argv[1:3] == ["-m", f"modelship_testbed.engine_fake.{module}"], argv
    return argv[3:]


@pytest.mark.parametrize("golden, tp, quantization", [("vllm.yaml", 1, None), ("vllm-multi-gpu.yaml", 4, "fp8")])
def test_the_operators_vllm_command_lines_start_the_fake(golden, tp, quantization):
    args = vllm.parse_cli(fake_argv(golden, "vllm"))
    assert (args.model_tag, args.served_model_name, args.host, args.port) == (
        "/models/models--org--tiny/snapshots/0123456789abcdef0123456789abcdef01234567", ["m"], "127.0.0.1", 8080)
    assert (args.tensor_parallel_size, args.quantization, args.enable_prefix_caching) == (tp, quantization, True)


def test_the_operators_sglang_command_line_starts_the_fake():
    args = sglang.parser().parse_args(fake_argv("sglang.yaml", "sglang"))
    assert (args.served_model_name, args.host, args.port, args.tp_size, args.quantization) == (
        "m", "127.0.0.1", 8080, 2, "awq")
    assert (args.context_length, args.max_running_requests, args.enable_metrics) == (4096, 16, True)
    assert args.preferred_sampling_params == {"top_k": -1, "top_p": 0.9}


def exit_code(parse, argv: list[str], capsys) -> tuple[object, str]:
    with pytest.raises(SystemExit) as e:
        parse(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("flags, said", [
    (["--some-future-flag", "x"], "unrecognized arguments: --some-future-flag x"),
    (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
])
def test_vllm_refuses_what_vllm_refuses(flags, said, capsys):
    code, err = exit_code(vllm.parse_cli, ["serve", "org/tiny", *flags], capsys)
    assert code == 2 and said in err, err


def test_vllm_quantization_is_checked_against_v0_29_0(capsys):
    code, _ = exit_code(vllm.parse_cli, ["serve", "org/tiny", "--quantization", "bitsandbytes"], capsys)
    assert code == ("fake vLLM: ValueError: Unknown quantization method: bitsandbytes. Must be one of "
                    f"{list(vllm.QUANTIZATION_METHODS)}.")
    assert vllm.parse_cli(["serve", "org/tiny", "-q", "compressed-tensors"]).quantization == "compressed-tensors"


def test_vllm_reads_flags_as_its_flexible_argument_parser():
    args = vllm.parse_cli(["serve", "org/tiny", "--max_model_len=32k", "--served_model_name", "a", "b",
                           "--enforce-eager", "--no-enable-prefix-caching"])
    assert (args.max_model_len, args.served_model_name, args.enable_prefix_caching) == (32000, ["a", "b"], False)


@pytest.mark.parametrize("flags, said", [
    (["--some-future-flag", "x"], "unrecognized arguments: --some-future-flag x"),
    (["--quantization", "marlin"], "argument --quantization: invalid choice: 'marlin'"),
    (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
])
def test_sglang_refuses_what_sglang_refuses(flags, said, capsys):
    code, err = exit_code(sglang.parse, ["--model-path", "org/tiny", *flags], capsys)
    assert code == 2 and said in err, err


def test_sglang_takes_v0_5_20s_quantizations_and_aliases():
    args = sglang.parser().parse_args(["--model", "org/tiny", "--tensor-parallel-size", "2", "--quantization",
                                       "compressed-tensors", "--schedule-policy", "lpm", "--skip-server-warmup"])
    assert (args.model_path, args.tp_size, args.quantization, args.skip_server_warmup) == (
        "org/tiny", 2, "compressed-tensors", True)
    # argparse's prefixes, as SGLang's own parser (allow_abbrev): --tp is --tp-size (no other --tp* flag)
    assert sglang.parser().parse_args(["--tp", "4"]).tp_size == 4


def test_the_fakes_say_the_pinned_versions():
    assert (vllm.VERSION, sglang.VERSION) == ("0.29.0", "0.5.20")
