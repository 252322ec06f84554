"""``python -m controller`` flags that the install's manifests and chart rely on."""

from __future__ import annotations

from controller.__main__ import build_parser


def test_the_last_native_admission_flag_wins() -> None:
    """The kustomize component deploy/native-admission-off appends --no-native-admission to the
    base's --native-admission; the flag is off when neither is given (a local controller)."""
    parse = build_parser().parse_args
    assert parse(["--native-admission", "--no-native-admission"]).native_admission is False
    assert parse(["--no-native-admission", "--native-admission"]).native_admission is True
    assert parse([]).native_admission is False
