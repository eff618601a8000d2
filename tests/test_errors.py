"""clrl.errors.first_line: what a one-line error quotes of a library's exception."""

from __future__ import annotations

import pytest

from clrl.errors import CheckpointError, first_line


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("size mismatch for trunk.0.weight\n\tcopying a param with shape ..."), "size mismatch for trunk.0.weight"),
        (ValueError("  padded message  "), "padded message"),
        (RuntimeError(""), "RuntimeError"),
        (EOFError(), "EOFError"),
        (ValueError("\n\n"), "ValueError"),
    ],
)
def test_first_line(exc: BaseException, expected: str) -> None:
    assert first_line(exc) == expected


def test_a_network_mismatch_with_an_empty_message_still_names_the_checkpoint(tmp_path, monkeypatch) -> None:
    """restore_net used to index the message's first line and crashed on an empty one."""
    from clrl.rl.checkpoint import restore_net
    from clrl.rl.policy import build_actor_critic

    net = build_actor_critic((4, 4, 4), 8, "relu")
    net.add_task(0, 3)
    state = {"net": net.state_dict(), "heads": {0: 3}}

    def fail(*_a, **_k):
        raise RuntimeError("")

    monkeypatch.setattr(type(net), "load_state_dict", fail)
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: the network in the checkpoint does not match the config \(RuntimeError\)"):
        restore_net(net, state, tmp_path / "ckpt.pt")
