"""The provisioning service with the unmodified Azure IoT device SDK: a `weir serve` with
`[dps]` on 127.0.0.2:8883 assigns devices to a linked hub on 127.0.0.3:8883, where they
connect and send telemetry that lands in that hub's archive. Individual and group
(derived-key) symmetric-key enrollments, an initial twin, and revocation that reaches the
live hub session."""

import base64
import hashlib
import hmac
import time

import pytest
import requests
from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError

from weirhub import Hub, sas_token

DPS_IP, HUB_IP = "127.0.0.2", "127.0.0.3"


def loopback_alias_ok():
    import socket
    try:
        s = socket.socket()
        s.bind((HUB_IP, 0))
        s.close()
        return True
    except OSError:
        return False


@pytest.fixture
def linked(tmp_path, rules_dir):
    dps, hub = start_linked(tmp_path, rules_dir)
    yield dps, hub
    dps.stop()
    hub.stop()


def start_linked(tmp_path, rules_dir, settings=""):
    """A hub on 127.0.0.3 and a provisioning service on 127.0.0.2 linked to it."""
    assert loopback_alias_ok(), "127.0.0.0/8 must be usable (Linux routes it to lo)"
    (tmp_path / "hub").mkdir()
    hub = Hub(tmp_path / "hub", rules_dir, hostname=HUB_IP, ip=HUB_IP, fixed_ports={"mqtts": 8883}).start()
    (tmp_path / "dps").mkdir()
    config = f"""
[dps]
enabled = true
{settings}

[[dps.hub]]
hostname = "{HUB_IP}"
api = "{hub.api}"
connection_string = "{hub.service_connection_string()}"
"""
    dps = Hub(tmp_path / "dps", rules_dir, hostname=DPS_IP, ip=DPS_IP, fixed_ports={"mqtts": 8883, "https": 443},
              config=config).start()
    return dps, hub


def dps_call(dps, method, path, body=None, headers=None):
    key = [kv.split("=", 1)[1] for kv in (dps.data / "provisioningserviceowner.connstr").read_text().strip().split(";")
           if kv.startswith("SharedAccessKey=")][0]
    h = {"Authorization": sas_token(dps.hostname, key, int(time.time()) + 3600, "provisioningserviceowner")}
    h.update(headers or {})
    return requests.request(method, f"{dps.api}{path}?api-version=2021-10-01", json=body, headers=h, timeout=30)


def register(dps, registration_id, key, websockets=False):
    scope = dps_call(dps, "GET", "/provisioning").json()["idScope"]
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=DPS_IP, registration_id=registration_id, id_scope=scope, symmetric_key=key,
        server_verification_cert=open(dps.ca).read(), websockets=websockets)
    return client.register()


def hub_device(hub, device_id, key):
    return IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=HUB_IP, device_id=device_id,
        server_verification_cert=open(hub.ca).read(), connection_retry=False)


def derived(group_key, registration_id):
    mac = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def test_an_individual_enrollment_provisions_to_the_linked_hub(linked):
    dps, hub = linked
    # The service API takes only the provisioning service's own credential.
    assert dps.call("PUT", "/enrollments/dev-1", {"attestation": {"type": "symmetricKey"}}).status_code == 401
    r = dps_call(dps, "PUT", "/enrollments/dev-1", {"attestation": {"type": "symmetricKey"}})
    assert r.status_code == 200, r.text
    key = r.json()["attestation"]["symmetricKey"]["primaryKey"]

    result = register(dps, "dev-1", key)
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == HUB_IP
    assert result.registration_state.device_id == "dev-1"

    c = hub_device(hub, "dev-1", key)
    c.connect()
    for i in range(5):
        c.send_message(Message(f'{{"temp": {i}}}', content_type="application/json", content_encoding="utf-8"))
    c.shutdown()
    hub.wait_rows("archive", 5)
    assert {r[0] for r in hub.query("archive", "SELECT device_id FROM t")} == {"dev-1"}
    state = dps_call(dps, "GET", "/registrations/dev-1").json()
    assert state["assignedHub"] == HUB_IP and state["status"] == "assigned"
    assert state["substatus"] == "initialAssignment"

    # Again over MQTT over WebSocket (443): the same registration, nothing moves.
    again = register(dps, "dev-1", key, websockets=True)
    assert (again.status, again.registration_state.assigned_hub) == ("assigned", HUB_IP)

    # No enrollment takes over a device someone else made on the hub with other keys.
    hub.create_device("taken")
    r = dps_call(dps, "PUT", "/enrollments/taken", {"attestation": {"type": "symmetricKey"}})
    with pytest.raises(ClientError):
        register(dps, "taken", r.json()["attestation"]["symmetricKey"]["primaryKey"])
    assert hub.call("GET", "/devices/taken").json()["authentication"]["symmetricKey"]["primaryKey"] != \
        r.json()["attestation"]["symmetricKey"]["primaryKey"]

    # A wrong key does not register.
    with pytest.raises((CredentialError, ClientError)):
        register(dps, "dev-1", base64.b64encode(b"x" * 32).decode())


def test_a_group_enrollment_takes_derived_keys_and_gives_the_initial_twin(linked):
    dps, hub = linked
    r = dps_call(dps, "PUT", "/enrollmentGroups/line-3", {
        "attestation": {"type": "symmetricKey"},
        "initialTwin": {"tags": {"site": "plant-1"}, "properties": {"desired": {"interval": 5}}},
    })
    assert r.status_code == 200, r.text
    group_key = r.json()["attestation"]["symmetricKey"]["primaryKey"]
    key = derived(group_key, "sensor-9")
    result = register(dps, "sensor-9", key)
    assert (result.status, result.registration_state.assigned_hub) == ("assigned", HUB_IP)
    c = hub_device(hub, "sensor-9", key)
    c.connect()
    twin = c.get_twin()
    assert twin["desired"]["interval"] == 5
    c.shutdown()
    assert hub.call("GET", "/twins/sensor-9").json()["tags"] == {"site": "plant-1"}
    # Another registration id derives another key: the group key itself is no device key.
    with pytest.raises((CredentialError, ClientError)):
        register(dps, "sensor-10", group_key)


def test_revoking_an_enrollment_cuts_the_live_hub_session_within_a_second(linked):
    dps, hub = linked
    r = dps_call(dps, "PUT", "/enrollments/dev-r", {"attestation": {"type": "symmetricKey"}})
    key = r.json()["attestation"]["symmetricKey"]["primaryKey"]
    assert register(dps, "dev-r", key).status == "assigned"
    c = hub_device(hub, "dev-r", key)
    c.connect()
    assert hub.call("GET", "/devices/dev-r").json()["connectionState"] == "Connected"
    start = time.time()
    assert dps_call(dps, "DELETE", "/enrollments/dev-r", headers={"If-Match": "*"}).status_code == 204
    while c.connected and time.time() - start < 5:
        time.sleep(0.02)
    took = time.time() - start
    assert not c.connected and took < 1.0, f"the session lasted {took:.2f} s after the revocation"
    c.shutdown()
    assert hub.call("GET", "/devices/dev-r").json()["status"] == "disabled"
    with pytest.raises((CredentialError, ClientError)):
        register(dps, "dev-r", key)


def test_provisioning_only_revocation_leaves_hub_sessions_as_iot_hub_does(tmp_path, rules_dir):
    dps, hub = start_linked(tmp_path, rules_dir, 'revoke = "provisioning-only"')
    try:
        r = dps_call(dps, "PUT", "/enrollments/dev-p", {"attestation": {"type": "symmetricKey"}})
        key = r.json()["attestation"]["symmetricKey"]["primaryKey"]
        assert register(dps, "dev-p", key).status == "assigned"
        c = hub_device(hub, "dev-p", key)
        c.connect()
        e = r.json()
        e["provisioningStatus"] = "disabled"
        assert dps_call(dps, "PUT", "/enrollments/dev-p", e, headers={"If-Match": e["etag"]}).status_code == 200
        time.sleep(1.5)
        assert c.connected, "provisioning-only leaves the hub session alone"
        c.send_message("still here")
        c.shutdown()
        assert hub.call("GET", "/devices/dev-p").json()["status"] == "enabled"
        with pytest.raises((CredentialError, ClientError)):
            register(dps, "dev-p", key)
    finally:
        dps.stop()
        hub.stop()


PROD_IP = "127.0.0.4"


@pytest.fixture
def test_and_prod(tmp_path, rules_dir):
    hubs = {}
    for name, ip in (("test", HUB_IP), ("prod", PROD_IP)):
        (tmp_path / name).mkdir()
        hubs[name] = Hub(tmp_path / name, rules_dir, hostname=ip, ip=ip, fixed_ports={"mqtts": 8883}).start()
    links = "".join(f"""
[[dps.hub]]
hostname = "{h.hostname}"
api = "{h.api}"
connection_string = "{h.service_connection_string()}"
""" for h in hubs.values())
    (tmp_path / "dps").mkdir()
    dps = Hub(tmp_path / "dps", rules_dir, hostname=DPS_IP, ip=DPS_IP, fixed_ports={"mqtts": 8883},
              config="[dps]\nenabled = true\n" + links).start()
    yield dps, hubs["test"], hubs["prod"]
    dps.stop()
    for h in hubs.values():
        h.stop()


def enroll(dps, registration_id, hub_ip, migrate=True, update=True, etag=None, key=None):
    body = {"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
            "allocationPolicy": "static", "iotHubHostName": hub_ip,
            "initialTwin": {"tags": {"stage": "initial"}, "properties": {"desired": {"mode": "initial"}}},
            "reprovisionPolicy": {"updateHubAssignment": update, "migrateDeviceData": migrate}}
    r = dps_call(dps, "PUT", f"/enrollments/{registration_id}", body, headers={"If-Match": etag} if etag else None)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("policy", ["migrate", "reset", "never"])
def test_moving_an_enrollment_from_test_to_production_takes_effect_at_the_next_registration(test_and_prod, policy):
    dps, test, prod = test_and_prod
    reg = f"dev-{policy}"
    e = enroll(dps, reg, HUB_IP, migrate=policy == "migrate", update=policy != "never")
    key = e["attestation"]["symmetricKey"]["primaryKey"]
    assert register(dps, reg, key).registration_state.assigned_hub == HUB_IP
    c = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=HUB_IP, device_id=reg, server_verification_cert=open(test.ca).read(),
        connection_retry=False)
    c.connect()
    c.send_message("on test")
    c.shutdown()
    # Commissioning on the test hub changed the twin.
    twin = test.call("GET", f"/twins/{reg}").json()
    assert test.call("PATCH", f"/twins/{reg}", {"tags": {"stage": "tested"}, "properties": {"desired": {"mode": "tuned"}}},
                     headers={"If-Match": twin["etag"]}).status_code == 200

    # The operator points the enrollment at production and retires the device on test.
    enroll(dps, reg, PROD_IP, migrate=policy == "migrate", update=policy != "never", etag=e["etag"], key=key)
    dev = test.call("GET", f"/devices/{reg}").json()
    dev["status"] = "disabled"
    assert test.call("PUT", f"/devices/{reg}", dev, headers={"If-Match": dev["etag"]}).status_code == 200

    # The device app, refused by its hub, registers again (what the SDK samples do).
    with pytest.raises(CredentialError):
        hub_client = IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=key, hostname=HUB_IP, device_id=reg, server_verification_cert=open(test.ca).read(),
            connection_retry=False)
        hub_client.connect()
    state = register(dps, reg, key).registration_state
    if policy == "never":
        assert state.assigned_hub == HUB_IP, "updateHubAssignment false: stays on its first hub"
        assert prod.call("GET", f"/devices/{reg}").status_code == 404
        return
    assert state.assigned_hub == PROD_IP
    assert state.sub_status == {"migrate": "deviceDataMigrated", "reset": "deviceDataReset"}[policy]
    c = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=PROD_IP, device_id=reg, server_verification_cert=open(prod.ca).read(),
        connection_retry=False)
    c.connect()
    desired = c.get_twin()["desired"]
    c.send_message(Message('{"stage": "prod"}', content_type="application/json", content_encoding="utf-8"))
    c.shutdown()
    tags = prod.call("GET", f"/twins/{reg}").json()["tags"]
    if policy == "migrate":
        assert (desired["mode"], tags) == ("tuned", {"stage": "tested"})
    else:
        assert (desired["mode"], tags) == ("initial", {"stage": "initial"})
    prod.wait_rows("archive", 1)
    assert {r[0] for r in prod.query("archive", "SELECT device_id FROM t")} == {reg}


def verify_ca_on(hub, name, root):
    """Uploads `root` to the hub and proves possession, as an operator does once."""
    import certs
    r = hub.call("PUT", f"/certificates/{name}", {"properties": {"certificate": root.pem}})
    assert r.status_code == 200, r.text
    r = hub.call("POST", f"/certificates/{name}/generateVerificationCode", headers={"If-Match": r.json()["etag"]})
    code = r.json()["properties"]["verificationCode"]
    r = hub.call("POST", f"/certificates/{name}/verify", {"certificate": certs.device(code, issuer=root).pem},
                 headers={"If-Match": r.json()["etag"]})
    assert r.status_code == 200, r.text


def test_x509_enrollments_provision_by_certificate_and_by_ca(linked, tmp_path):
    import certs
    from azure.iot.device import X509
    dps, hub = linked
    scope = dps_call(dps, "GET", "/provisioning").json()["idScope"]

    def provision(reg, files):
        return ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=DPS_IP, registration_id=reg, id_scope=scope, x509=X509(*files),
            server_verification_cert=open(dps.ca).read()).register()

    def connect_and_send(reg, files):
        c = IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(*files), hostname=HUB_IP, device_id=reg, server_verification_cert=open(hub.ca).read(),
            connection_retry=False)
        c.connect()
        c.send_message(Message('{"x509": true}', content_type="application/json", content_encoding="utf-8"))
        c.shutdown()

    own = certs.device("x-dev-1")
    r = dps_call(dps, "PUT", "/enrollments/x-dev-1", {"attestation": {"type": "x509", "x509": {
        "clientCertificates": {"primary": {"certificate": own.pem}}}}})
    assert r.status_code == 200, r.text
    files = own.write(tmp_path, "x-dev-1")
    state = provision("x-dev-1", files).registration_state
    assert state.assigned_hub == HUB_IP
    assert hub.call("GET", "/devices/x-dev-1").json()["authentication"]["type"] == "selfSigned"
    connect_and_send("x-dev-1", files)
    # Another certificate for the same registration id is refused.
    with pytest.raises((CredentialError, ClientError)):
        provision("x-dev-1", certs.device("x-dev-1").write(tmp_path, "x-dev-1-other"))

    root = certs.ca("Fleet Root")
    verify_ca_on(hub, "fleet", root)
    r = dps_call(dps, "PUT", "/enrollmentGroups/fleet", {"attestation": {"type": "x509", "x509": {
        "signingCertificates": {"primary": {"certificate": root.pem}}}}})
    assert r.status_code == 200, r.text
    member = certs.device("x-fleet-7", issuer=root)
    files = member.write(tmp_path, "x-fleet-7")
    state = provision("x-fleet-7", files).registration_state
    assert (state.assigned_hub, state.device_id) == (HUB_IP, "x-fleet-7")
    assert hub.call("GET", "/devices/x-fleet-7").json()["authentication"]["type"] == "certificateAuthority"
    connect_and_send("x-fleet-7", files)
    stranger = certs.device("x-fleet-8", issuer=certs.ca("Other Root"))
    with pytest.raises((CredentialError, ClientError)):
        provision("x-fleet-8", stranger.write(tmp_path, "x-fleet-8"))
    hub.wait_rows("archive", 2)


def test_custom_allocation_reads_the_devices_payload(test_and_prod):
    dps, test, prod = test_and_prod
    r = dps_call(dps, "PUT", "/enrollmentGroups/staged", {
        "attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom",
        "customAllocation": [
            {"condition": "$body.stage = 'prod'", "iotHubHostName": PROD_IP},
            {"condition": "true", "iotHubHostName": HUB_IP}]})
    assert r.status_code == 200, r.text
    group_key = r.json()["attestation"]["symmetricKey"]["primaryKey"]
    scope = dps_call(dps, "GET", "/provisioning").json()["idScope"]
    for reg, payload, hub in (("c-1", {"stage": "prod"}, PROD_IP), ("c-2", {"stage": "lab"}, HUB_IP), ("c-3", None, HUB_IP)):
        client = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=DPS_IP, registration_id=reg, id_scope=scope, symmetric_key=derived(group_key, reg),
            server_verification_cert=open(dps.ca).read())
        if payload is not None:
            client.provisioning_payload = payload
        assert client.register().registration_state.assigned_hub == hub, reg
    bad = dps_call(dps, "PUT", "/enrollmentGroups/broken", {
        "attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom",
        "customAllocation": [{"condition": "$body.stage = ", "iotHubHostName": HUB_IP}]})
    assert bad.status_code == 400 and "customAllocation[0]" in bad.text


def test_weir_dps_commands(linked):
    from conftest import run_weir
    dps, hub = linked
    common = ["--api", dps.api, "--data-dir", dps.data]
    r = run_weir("dps", "info", *common)
    assert r.returncode == 0, r.stderr
    scope = r.stdout.split("ID scope:")[1].split()[0]
    assert scope == dps_call(dps, "GET", "/provisioning").json()["idScope"] and HUB_IP in r.stdout
    r = run_weir("dps", "enrollment", "create", "cli-1", "--hub", HUB_IP, "--tag", "site=lab", *common)
    assert r.returncode == 0, r.stderr
    key = r.stdout.split("key:")[1].split()[0]
    assert register(dps, "cli-1", key).registration_state.assigned_hub == HUB_IP
    assert hub.call("GET", "/twins/cli-1").json()["tags"] == {"site": "lab"}
    r = run_weir("dps", "registration", "show", "cli-1", *common)
    assert r.returncode == 0 and '"assignedHub": "127.0.0.3"' in r.stdout, r.stdout + r.stderr
    r = run_weir("dps", "enrollment", "disable", "cli-1", *common)
    assert r.returncode == 0, r.stderr
    assert hub.call("GET", "/devices/cli-1").json()["status"] == "disabled"
    r = run_weir("dps", "group", "create", "cli-g", *common)
    assert r.returncode == 0 and "group key:" in r.stdout, r.stdout + r.stderr
    # The hub's own credential is no provisioning credential.
    r = run_weir("dps", "info", "--api", dps.api, "--connection-string", dps.service_connection_string())
    assert r.returncode != 0 and "401" in r.stderr, r.stderr
