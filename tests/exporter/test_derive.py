"""Gateways and public services from Kubernetes objects (pure functions, no cluster)."""

from __future__ import annotations

import pytest

from apiproxy.exporter.derive import (
    advertise_from_configmap,
    authn_key_from_secret,
    gateways_from_cluster,
    public_services,
)
from apiproxy.metadata import IngressGateway, MetadataFormatError, PublicService, ServicePort
from tests.exporter import cluster as c


def test_load_balancer_publishes_every_ingress_ip_or_hostname_with_the_tls_port_sorted() -> None:
    service = c.gateway_service(
        ingress=[{"ip": "203.0.113.9"}, {"hostname": "gw.example.com"}, {"ip": "192.0.2.1"}]
    )
    assert gateways_from_cluster([service], [], []) == (
        IngressGateway("192.0.2.1", 15443),
        IngressGateway("203.0.113.9", 15443),
        IngressGateway("gw.example.com", 15443),
    )


def test_load_balancer_without_an_address_yet_publishes_nothing() -> None:
    assert gateways_from_cluster([c.gateway_service(ingress=[])], [], []) == ()


def test_service_without_the_named_port_publishes_nothing() -> None:
    service = c.gateway_service(ingress=[{"ip": "203.0.113.9"}])
    service["spec"]["ports"] = [p for p in service["spec"]["ports"] if p["name"] != "tls"]
    assert gateways_from_cluster([service], [], []) == ()
    assert gateways_from_cluster([c.gateway_service(ingress=[{"ip": "203.0.113.9"}])], [], [], "other") == ()


def test_node_port_uses_ready_schedulable_nodes_running_a_ready_gateway_pod() -> None:
    nodes = [
        c.node("a", external="198.51.100.1", internal="10.0.0.1"),
        c.node("b", internal="10.0.0.2"),
        c.node("unready", ready=False, external="198.51.100.3"),
        c.node("cordoned", cordoned=True, external="198.51.100.4"),
        c.node("no-gateway", external="198.51.100.5"),
        c.node("unready-pod", external="198.51.100.6"),
    ]
    pods = [
        c.gateway_pod("p-a", "a"),
        c.gateway_pod("p-a2", "a"),  # two pods on one node: one entry
        c.gateway_pod("p-b", "b"),
        c.gateway_pod("p-unready", "unready"),
        c.gateway_pod("p-cordoned", "cordoned"),
        c.gateway_pod("p-not-ready", "unready-pod", ready=False),
        c.gateway_pod("p-lost", "deleted-node"),
    ]
    service = c.gateway_service("NodePort")
    assert gateways_from_cluster([service], pods, nodes) == (
        IngressGateway("10.0.0.2", 30443),
        IngressGateway("198.51.100.1", 30443),
    )
    terminating = c.gateway_pod("p-b", "b")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert gateways_from_cluster([service], [pods[0], terminating], nodes) == (
        IngressGateway("198.51.100.1", 30443),
    )


def test_cluster_ip_gateway_is_not_reachable_from_peers() -> None:
    assert (
        gateways_from_cluster([c.gateway_service("ClusterIP")], [c.gateway_pod("p", "a")], [c.node("a")])
        == ()
    )


def test_public_services_are_named_in_the_cluster_domain_sorted_with_ports_in_spec_order() -> None:
    services = [
        c.public_service("checkout", "payments", [("http", 8080), ("grpc", 9090)]),
        c.public_service("catalog", "search", [("http", 80)]),
    ]
    assert public_services(services, "corp.internal") == (
        PublicService("catalog.search.svc.corp.internal", (ServicePort("http", 80),)),
        PublicService(
            "checkout.payments.svc.corp.internal", (ServicePort("http", 8080), ServicePort("grpc", 9090))
        ),
    )


def test_keypair_secret_is_republished_with_the_deckhouse_label() -> None:
    standard = c.LOCAL_PUB.replace("ED25519 PUBLIC KEY", "PUBLIC KEY")
    assert authn_key_from_secret(c.keypair_secret(standard)) == c.LOCAL_PUB
    assert authn_key_from_secret({"metadata": {"name": "k"}, "data": {}}) is None
    with pytest.raises(MetadataFormatError):
        authn_key_from_secret(
            c.keypair_secret("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        )
    with pytest.raises(MetadataFormatError, match="base64"):
        authn_key_from_secret({"metadata": {"name": "k"}, "data": {"pub.pem": "%%%"}})


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        '{"address": "1.2.3.4", "port": 443}',
        '[{"address": "1.2.3.4"}]',
        '[{"address": "1.2.3.4", "port": 0}]',
        '[{"address": "1.2.3.4", "port": true}]',
        '[{"address": "", "port": 443}]',
        '[{"address": "bad host!", "port": 443}]',
        '[{"address": "1.2.3.4", "port": 443, "port": 444}]',
    ],
)
def test_malformed_advertise_override_is_refused(value: str) -> None:
    with pytest.raises(MetadataFormatError):
        advertise_from_configmap(c.advertise_configmap(value))


def test_advertise_override_keeps_the_operators_order() -> None:
    value = '[{"address": "b.example.com", "port": 443}, {"address": "10.1.1.1", "port": 15443}]'
    assert advertise_from_configmap(c.advertise_configmap(value)) == (
        IngressGateway("b.example.com", 443),
        IngressGateway("10.1.1.1", 15443),
    )
