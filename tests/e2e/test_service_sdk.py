"""The unmodified azure-iot-hub service SDK (2.7.0) over HTTPS on 443: registry CRUD, twin
get/update and direct-method invocation."""

import time

import pytest
from azure.iot.device import IoTHubDeviceClient, MethodResponse
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

from weirhub import Hub


@pytest.fixture
def service_hub(tmp_path, rules_dir, monkeypatch):
    h = Hub(tmp_path, rules_dir, fixed_ports={"mqtts": 8883, "https": 443}).start()
    # The SDK verifies TLS with requests, which trusts this bundle.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", h.ca)
    yield h
    h.stop()


def test_registry_twins_and_methods_through_the_service_sdk(service_hub):
    hub = service_hub
    rm = IoTHubRegistryManager.from_connection_string(hub.service_connection_string())

    created = rm.create_device_with_sas("svc-1", None, None, "enabled")
    assert created.device_id == "svc-1" and created.status == "enabled"
    key = created.authentication.symmetric_key.primary_key
    assert len(key) == 44
    got = rm.get_device("svc-1")
    assert got.etag == created.etag and got.connection_state == "Disconnected"
    updated = rm.update_device_with_sas("svc-1", got.etag, key, created.authentication.symmetric_key.secondary_key, "disabled")
    assert updated.status == "disabled" and updated.etag != got.etag
    assert hub.call("GET", "/devices/svc-1").json()["status"] == "disabled"

    twin = rm.get_twin("svc-1")
    assert twin.device_id == "svc-1" and twin.properties.desired["$version"] == 1
    patch = Twin(tags={"site": "oslo"}, properties=TwinProperties(desired={"fan": "on"}))
    twin2 = rm.update_twin("svc-1", patch, twin.etag)
    assert twin2.tags == {"site": "oslo"} and twin2.properties.desired["fan"] == "on"
    assert twin2.properties.desired["$version"] == 2 and twin2.etag != twin.etag

    device = rm.create_device_with_sas("svc-2", None, None, "enabled")
    client = IoTHubDeviceClient.create_from_connection_string(
        hub.connection_string("svc-2", device.authentication.symmetric_key.primary_key),
        server_verification_cert=open(hub.ca).read())
    client.on_method_request_received = lambda req: client.send_method_response(
        MethodResponse.create_from_method_request(req, 200, {"got": req.payload}))
    client.connect()
    time.sleep(0.5)
    result = rm.invoke_device_method("svc-2", CloudToDeviceMethod(method_name="ping", payload={"n": 7}, response_timeout_in_seconds=10))
    assert result.status == 200 and result.payload == {"got": {"n": 7}}
    client.shutdown()

    rm.delete_device("svc-1")
    rm.delete_device("svc-2")
    assert hub.call("GET", "/devices").json() == []
