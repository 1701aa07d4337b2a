"""The provisioning service in a cluster (decision 043): enrollments and registrations
made through one process reach every process, so a device provisions through any of
them with the Azure IoT SDK's ProvisioningDeviceClient, under one ID scope."""

import base64
import os
import time

import pytest
import requests
from azure.iot.device import ProvisioningDeviceClient
from azure.iot.device.exceptions import CredentialError

from test_cluster import start_cluster, stop_together, wait_for
from weirhub import sas_token

SCOPE = "0ne00C1A5"
# The SDK dials 8883, so each process has a loopback address of its own.
IPS = ["127.0.0.5", "127.0.0.6"]


def dps_call(hub, method, path, body=None, headers=None):
    """The provisioning service API of `hub`, with that process's own credential."""
    conn = (hub.data / "provisioningserviceowner.connstr").read_text().strip()
    key = [kv.split("=", 1)[1] for kv in conn.split(";") if kv.startswith("SharedAccessKey=")][0]
    h = {"Authorization": sas_token(hub.hostname, key, int(time.time()) + 3600, "provisioningserviceowner")}
    h.update(headers or {})
    return requests.request(method, f"{hub.api}{path}?api-version=2021-10-01", json=body, headers=h, timeout=30)


def test_an_enrollment_made_through_one_process_provisions_through_another(tmp_path):
    hubs = start_cluster(tmp_path, 2, 1, rules='[[endpoint]]\nname = "raw"\ntype = "parquet"\n',
                         config=f"[dps]\nenabled = true\nid_scope = \"{SCOPE}\"\n",
                         each=lambda i: {"hostname": IPS[i], "ip": IPS[i], "fixed_ports": {"mqtts": 8883}})
    try:
        for h in hubs:
            assert dps_call(h, "GET", "/provisioning").json()["idScope"] == SCOPE

        key = base64.b64encode(os.urandom(32)).decode()
        enrollment = {"registrationId": "line-7-press", "attestation": {
            "type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
            "initialTwin": {"tags": {"line": "7"}}}
        r = dps_call(hubs[0], "PUT", "/enrollments/line-7-press", enrollment)
        assert r.status_code == 200, r.text
        etag = r.json()["etag"]
        assert wait_for(lambda: dps_call(hubs[1], "GET", "/enrollments/line-7-press").json().get("etag") == etag), \
            "the enrollment made through process 0 did not reach process 1"

        client = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=IPS[1], registration_id="line-7-press", id_scope=SCOPE, symmetric_key=key,
            server_verification_cert=open(hubs[1].ca).read())
        result = client.register()
        assert result.status == "assigned", result
        assert result.registration_state.assigned_hub == IPS[1]
        assert result.registration_state.device_id == "line-7-press"

        # The registration and the device it created are known on process 0 too.
        def registered_on_0():
            r = dps_call(hubs[0], "GET", "/registrations/line-7-press")
            return r.status_code == 200 and r.json().get("status") == "assigned"
        assert wait_for(registered_on_0), "the registration through process 1 did not reach process 0"
        device = hubs[0].call("GET", "/twins/line-7-press")
        assert device.status_code == 200 and device.json()["tags"] == {"line": "7"}, device.text

        # Deleted through process 1: gone on process 0, and the device can no longer provision.
        assert dps_call(hubs[1], "DELETE", "/enrollments/line-7-press").status_code == 204
        assert wait_for(lambda: dps_call(hubs[0], "GET", "/enrollments/line-7-press").status_code == 404), \
            "the deletion through process 1 did not reach process 0"
        again = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=IPS[0], registration_id="line-7-press", id_scope=SCOPE, symmetric_key=key,
            server_verification_cert=open(hubs[0].ca).read())
        with pytest.raises(CredentialError):
            again.register()
    finally:
        codes = stop_together(hubs)
    assert codes == [0, 0], codes
