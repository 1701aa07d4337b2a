"""X.509 device authentication with the unmodified Azure IoT device SDK, over MQTT/TLS on
8883 and MQTT over WebSocket on 443 (and QUIC with a raw client): a self-signed device
registered by thumbprint, a CA-signed device after IoT Hub's proof-of-possession flow,
refusals of expired, not-yet-valid and foreign certificates with CONNACK 5, SAS devices on
the same ports, revocation when a CA goes, and `weir ca`."""

import base64
import shutil
import ssl
import time

import paho.mqtt.client as paho
import pytest
import requests
from azure.iot.device import IoTHubDeviceClient, Message, X509
from azure.iot.device.exceptions import CredentialError

import certs
from conftest import FIXTURES, run_weir
from quicmqtt import QuicMqtt
from weirhub import Hub

FIXED = {"mqtts": 8883, "https": 443}


# Messages by how their device authenticated, as routes see it.
BY_AUTH = """
[[endpoint]]
name = "self_signed"
type = "parquet"

[[endpoint]]
name = "ca_signed"
type = "parquet"

[[route]]
name = "self_signed"
condition = "CONTAINS($connectionAuthMethod, '\\"type\\":\\"selfSigned\\"')"
endpoints = ["self_signed"]

[[route]]
name = "ca_signed"
condition = "CONTAINS($connectionAuthMethod, '\\"type\\":\\"certificateAuthority\\"')"
endpoints = ["ca_signed"]
"""


@pytest.fixture
def sdk_hub(tmp_path, rules_dir):
    shutil.copy(FIXTURES / "extra" / "events.toml", rules_dir)
    (rules_dir / "by_auth.toml").write_text(BY_AUTH)
    h = Hub(tmp_path, rules_dir, fixed_ports=FIXED).start()
    yield h
    h.stop()


def sdk(hub, device_id, files, websockets=False):
    cert, key = files
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert, key), hostname=hub.hostname, device_id=device_id,
        server_verification_cert=open(hub.ca).read(), websockets=websockets,
        connection_retry=False)


def put(hub, path, body, etag=None):
    headers = {"If-Match": f'"{etag}"'} if etag else {}
    return hub.call("PUT", path, body, headers=headers)


def create_x509_device(hub, device_id, authentication):
    r = put(hub, f"/devices/{device_id}", {"deviceId": device_id, "authentication": authentication})
    assert r.status_code == 200, r.text
    assert r.json()["authentication"]["type"] == authentication["type"]
    return r.json()


def devices_in(hub, endpoint):
    return {r[0] for r in hub.query(endpoint, "SELECT DISTINCT device_id FROM t")}


def paho_connack(hub, device_id, files):
    """The CONNACK code paho gets presenting `files` (no password) over MQTT/TLS."""
    got = []
    c = paho.Client(client_id=device_id, protocol=paho.MQTTv311, clean_session=False)
    c.username_pw_set(f"{hub.hostname}/{device_id}/?api-version=2019-10-01")
    c.tls_set(ca_certs=hub.ca, certfile=files[0] if files else None, keyfile=files[1] if files else None,
              tls_version=ssl.PROTOCOL_TLSv1_2)
    c.on_connect = lambda cl, u, f, rc: got.append(rc)
    c.connect("127.0.0.1", hub.mqtts_port, 30)
    deadline = time.time() + 10
    while not got and time.time() < deadline:
        c.loop(0.1)
    c.disconnect()
    assert got, "no CONNACK"
    return got[0]


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt-tls", "websocket"])
def test_a_self_signed_device_connects_by_thumbprint(sdk_hub, tmp_path, websockets):
    hub = sdk_hub
    own = certs.device("thumb")
    create_x509_device(hub, "thumb", {"type": "selfSigned", "x509Thumbprint": {
        # openssl's form (colons, lower case) is the same thumbprint.
        "primaryThumbprint": ":".join(own.thumbprint().lower()[i:i + 2] for i in range(0, 40, 2))}})
    c = sdk(hub, "thumb", own.write(tmp_path, "thumb"), websockets)
    c.connect()
    for i in range(5):
        c.send_message(Message(f'{{"temp": {20 + i}}}', content_type="application/json", content_encoding="utf-8"))
    twin = c.get_twin()
    assert "desired" in twin and "reported" in twin
    c.patch_twin_reported_properties({"firmware": "1.2"})
    c.shutdown()
    hub.wait_rows("self_signed", 5)
    assert devices_in(hub, "self_signed") == {"thumb"} and not devices_in(hub, "ca_signed")
    doc = hub.call("GET", "/twins/thumb").json()
    assert doc["authenticationType"] == "selfSigned"
    assert doc["properties"]["reported"]["firmware"] == "1.2"

    # A second thumbprint (SHA-256) for rollover: the new certificate works too.
    new = certs.device("thumb")
    dev = hub.call("GET", "/devices/thumb").json()
    dev["authentication"]["x509Thumbprint"]["secondaryThumbprint"] = new.thumbprint("sha256")
    assert put(hub, "/devices/thumb", dev, dev["etag"]).status_code == 200
    c = sdk(hub, "thumb", new.write(tmp_path, "thumb-new"), websockets)
    c.connect()
    c.send_message("rolled over")
    c.shutdown()


def test_refusals_get_connack_5_and_the_sdk_a_credential_error(sdk_hub, tmp_path):
    hub = sdk_hub
    expired = certs.device("old", not_before=certs.NOW - 30 * certs.DAY, not_after=certs.NOW - certs.DAY)
    early = certs.device("early", not_before=certs.NOW + certs.DAY, not_after=certs.NOW + 30 * certs.DAY)
    for name, cert in [("old", expired), ("early", early)]:
        create_x509_device(hub, name, {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": cert.thumbprint()}})
    create_x509_device(hub, "stranger", {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "AB" * 20}})
    key = hub.create_device("keyed")["authentication"]["symmetricKey"]["primaryKey"]
    assert paho_connack(hub, "old", expired.write(tmp_path, "old")) == 5
    assert paho_connack(hub, "early", early.write(tmp_path, "early")) == 5
    assert paho_connack(hub, "stranger", certs.device("stranger").write(tmp_path, "stranger")) == 5
    # A SAS device that sends a certificate and no token is not let in by the certificate.
    assert paho_connack(hub, "keyed", certs.device("keyed").write(tmp_path, "keyed")) == 5
    # Neither token nor certificate: the password is missing (4), as before.
    assert paho_connack(hub, "keyed", None) == 4
    with pytest.raises(CredentialError):
        sdk(hub, "old", expired.write(tmp_path, "old-sdk")).connect()
    # SAS devices keep working on the same port.
    c = IoTHubDeviceClient.create_from_connection_string(
        hub.connection_string("keyed", key), server_verification_cert=open(hub.ca).read())
    c.connect()
    c.send_message("sas still works")
    c.shutdown()
    assert hub.metric("weir_gateway_connects_refused_total") >= 4


def test_a_ca_authenticates_its_devices_only_after_proof_of_possession(sdk_hub, tmp_path):
    hub = sdk_hub
    root = certs.ca("Weir Test Root")
    intermediate = certs.ca("Weir Test Intermediate", issuer=root)
    r = put(hub, "/certificates/root", {"properties": {"certificate": base64.b64encode(root.der).decode()}})
    assert r.status_code == 200, r.text
    ca = r.json()
    assert ca["properties"]["isVerified"] is False
    assert ca["properties"]["thumbprint"] == root.thumbprint()
    assert put(hub, "/certificates/root", {"properties": {"certificate": root.pem}}).status_code == 409
    # A device certificate is no CA.
    bad = put(hub, "/certificates/leaf", {"properties": {"certificate": certs.device("x").pem}})
    assert bad.status_code == 400 and "CA" in bad.text

    create_x509_device(hub, "chained", {"type": "certificateAuthority"})
    leaf = certs.device("chained", issuer=intermediate)
    files = leaf.write(tmp_path, "chained")
    with pytest.raises(CredentialError):
        sdk(hub, "chained", files).connect()

    r = hub.call("POST", "/certificates/root/generateVerificationCode", headers={"If-Match": f'"{ca["etag"]}"'})
    assert r.status_code == 200, r.text
    coded = r.json()
    code = coded["properties"]["verificationCode"]
    headers = {"If-Match": f'"{coded["etag"]}"'}
    wrong_cn = certs.device("not-the-code", issuer=root)
    other_ca = certs.device(code, issuer=certs.ca("Someone Else"))
    for proof in (wrong_cn, other_ca):
        r = hub.call("POST", "/certificates/root/verify", {"certificate": proof.pem}, headers=headers)
        assert r.status_code == 400, r.text
    stale = hub.call("POST", "/certificates/root/verify", {"certificate": certs.device(code, issuer=root).pem},
                     headers={"If-Match": f'"{ca["etag"]}"'})
    assert stale.status_code == 412
    r = hub.call("POST", "/certificates/root/verify", {"certificate": certs.device(code, issuer=root).pem},
                 headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["properties"]["isVerified"] is True

    for websockets in (False, True):
        c = sdk(hub, "chained", files, websockets)
        c.connect()
        c.send_message(Message('{"temp": 1}', content_type="application/json", content_encoding="utf-8"))
        c.shutdown()
    hub.wait_rows("ca_signed", 2)
    assert devices_in(hub, "ca_signed") == {"chained"} and not devices_in(hub, "self_signed")

    # A certificate of the right CA naming another device, or expired, is refused.
    create_x509_device(hub, "chained2", {"type": "certificateAuthority"})
    assert paho_connack(hub, "chained2", files) == 5
    expired = certs.device("chained2", issuer=intermediate, not_before=certs.NOW - 9 * certs.DAY,
                           not_after=certs.NOW - certs.DAY)
    assert paho_connack(hub, "chained2", expired.write(tmp_path, "chained2-old")) == 5
    foreign = certs.device("chained2", issuer=certs.ca("Foreign Root"))
    assert paho_connack(hub, "chained2", foreign.write(tmp_path, "chained2-foreign")) == 5

    # The verification survives a restart.
    hub.stop()
    hub.start()
    assert hub.call("GET", "/certificates/root").json()["properties"]["isVerified"] is True

    # Deleting the CA cuts the live sessions that authenticated with it.
    c = sdk(hub, "chained", files)
    c.connect()
    assert hub.call("DELETE", "/certificates/root", headers={"If-Match": "*"}).status_code == 204
    deadline = time.time() + 5
    while c.connected and time.time() < deadline:
        time.sleep(0.05)
    assert not c.connected, "the CA's device is still connected"
    c.shutdown()
    assert paho_connack(hub, "chained", files) == 5


def test_quic_devices_authenticate_with_certificates(hub, tmp_path):
    own = certs.device("quicky")
    create_x509_device(hub, "quicky", {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": own.thumbprint()}})
    expired = certs.device("quicky", not_before=certs.NOW - 9 * certs.DAY, not_after=certs.NOW - certs.DAY)
    for cert, want in ((own, 0), (expired, 5)):
        q = QuicMqtt(hub.quic_port, hub.ca, cert=cert.write(tmp_path, f"q{want}"))
        try:
            assert q.connect("quicky", hub.username("quicky"), None) == want
        finally:
            q.close()


def test_weir_ca_adds_verifies_lists_and_deletes(hub, tmp_path):
    root = certs.ca("CLI Root")
    cert, key = root.write(tmp_path, "root")
    common = ["--api", hub.api, "--data-dir", hub.data]
    r = run_weir("ca", "add", "cli-root", "--cert", cert, "--key", key, *common)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    r = run_weir("ca", "list", *common)
    assert r.returncode == 0 and "cli-root" in r.stdout and "true" in r.stdout, r.stdout
    r = run_weir("device", "create", "cli-chained", "--x509-ca", *common)
    assert r.returncode == 0 and "certificateAuthority" in r.stdout, r.stdout + r.stderr
    r = run_weir("device", "create", "cli-thumb", "--x509-thumbprint", certs.device("t").thumbprint(), *common)
    assert r.returncode == 0 and "selfSigned" in r.stdout, r.stdout + r.stderr
    # Without the key, the code to sign is printed; a proof made elsewhere verifies it.
    other = certs.ca("CLI Other")
    ocert, _ = other.write(tmp_path, "other")
    r = run_weir("ca", "add", "cli-other", "--cert", ocert, *common)
    assert r.returncode == 0 and "verification code:" in r.stdout, r.stdout
    code = r.stdout.split("verification code:")[1].split()[0]
    proof = tmp_path / "proof.pem"
    proof.write_text(certs.device(code, issuer=other).pem)
    r = run_weir("ca", "verify", "cli-other", "--proof", proof, *common)
    assert r.returncode == 0, r.stderr
    assert hub.call("GET", "/certificates/cli-other").json()["properties"]["isVerified"] is True
    r = run_weir("ca", "delete", "cli-root", *common)
    assert r.returncode == 0, r.stderr
    assert hub.call("GET", "/certificates/cli-root").status_code == 404
    assert requests.get(hub.api + "/certificates").status_code == 401, "the API needs a service credential"
