"""The one configuration rule: an explicit kubeconfig, else the service account, else a clear error.

The service-account cases run against the real API server: a directory laid out like the one the
kubelet mounts (token, ca.crt, namespace) holds tokens issued by the TokenRequest API, and the API
server itself says who each request was made as.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import kube
from kube.config import ConfigError, from_kubeconfig, load


def test_nothing_configured_is_an_error_naming_both_ways(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={}, service_account_dir=tmp_path)
    message = str(caught.value)
    assert "--kubeconfig" in message
    assert "$KUBECONFIG" in message
    assert "service account" in message
    assert str(tmp_path / "token") in message


def test_a_kubeconfig_flag_and_in_cluster_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        load(tmp_path / "kubeconfig", in_cluster=True, environ={})


def test_a_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        load(missing, environ={})
    with pytest.raises(ConfigError, match=str(missing)):
        load(environ={"KUBECONFIG": str(missing)})


def test_in_cluster_without_a_pod_environment_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        load(in_cluster=True, environ={}, service_account_dir=tmp_path)
    with pytest.raises(ConfigError, match="token"):
        load(in_cluster=True, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, service_account_dir=tmp_path)


def _username(api: kube.Client) -> str:
    """Who the API server says this request was made as."""
    review = api.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    return str(review["status"]["userInfo"]["username"])


def _who(connection: kube.Connection) -> str:
    with kube.Client(connection) as api:
        return _username(api)


def test_kubeconfig_from_the_environment_is_used_with_its_context_namespace(
    control_plane: Any, tmp_path: Path
) -> None:
    connection = load(environ={"KUBECONFIG": str(control_plane.kubeconfig)}, service_account_dir=tmp_path)
    assert connection.source == f"kubeconfig {control_plane.kubeconfig}"
    assert connection.server == control_plane.server
    assert connection.namespace == "default"
    assert _who(connection) == "agentops-admin"


def _token(api: kube.Client, namespace: str, account: str) -> str:
    answer = api.request(
        "POST",
        kube.path("v1", "serviceaccounts", account, namespace=namespace, subresource="token"),
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    return str(answer["status"]["token"])


def test_the_service_account_token_is_read_again_for_every_request(
    control_plane: Any,
    k8s_api: kube.Client,
    namespace: str,
    tmp_path: Path,
) -> None:
    for account in ("first", "second"):
        k8s_api.create(
            kube.path("v1", "serviceaccounts", namespace=namespace), {"metadata": {"name": account}}
        )
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "ca.crt").write_bytes(control_plane.ca_file.read_bytes())
    (mounted / "namespace").write_text(namespace)
    (mounted / "token").write_text(_token(k8s_api, namespace, "first"))
    server = urlsplit(control_plane.server)
    pod_env = {"KUBERNETES_SERVICE_HOST": str(server.hostname), "KUBERNETES_SERVICE_PORT": str(server.port)}

    # Without $KUBECONFIG the service account is next; with it, --in-cluster still picks the account.
    for connection in (
        load(environ=pod_env, service_account_dir=mounted),
        load(in_cluster=True, environ={**pod_env, "KUBECONFIG": str(control_plane.kubeconfig)},
             service_account_dir=mounted),
    ):  # fmt: skip
        assert connection.source == "in-cluster service account"
        assert connection.namespace == namespace
        assert _who(connection) == f"system:serviceaccount:{namespace}:first"

    # The kubelet rotates a projected token by replacing the file: the same client (and connection)
    # presents the new one on its next request.
    with kube.Client(load(environ=pod_env, service_account_dir=mounted)) as api:
        assert _username(api) == f"system:serviceaccount:{namespace}:first"
        (mounted / "token").write_text(_token(k8s_api, namespace, "second"))
        assert _username(api) == f"system:serviceaccount:{namespace}:second"


@pytest.mark.parametrize(
    "text", ["apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n", "clusters: [unclosed\n"]
)
def test_a_kubeconfig_that_is_not_one_is_refused(tmp_path: Path, text: str) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text(text)
    with pytest.raises(ConfigError, match=str(broken)):
        from_kubeconfig(broken)
