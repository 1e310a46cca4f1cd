"""Pins the public surface of llmsys.core."""

import llmsys
import llmsys.core


def test_core_all_is_pinned() -> None:
    assert sorted(llmsys.core.__all__) == [
        "BundledModel",
        "ConfigError",
        "InputError",
        "LlmsysError",
        "MachineReport",
        "ModelUnavailableError",
        "ResourceError",
        "bundled_gguf_path",
        "chat_prompt_ids",
        "config_hash",
        "git_sha",
        "greedy_generate",
        "load_bundled_model",
        "probe_machine",
    ]
    for name in llmsys.core.__all__:
        assert hasattr(llmsys.core, name)


def test_errors_are_value_errors_where_documented() -> None:
    from llmsys.core import ConfigError, InputError, LlmsysError

    assert issubclass(ConfigError, ValueError)
    assert issubclass(InputError, ValueError)
    assert issubclass(InputError, LlmsysError)


def test_top_level_all_is_pinned() -> None:
    assert llmsys.__all__ == ["__version__"]
