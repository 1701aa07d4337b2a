"""Thin helpers around paho-mqtt 1.6 (the version the Azure SDK pins)."""

import threading
import time

import paho.mqtt.client as mqtt


class Device:
    """A paho client connected as one device; records CONNACK and disconnects."""

    def __init__(self, hub, device_id, token, tls=True, keepalive=60, clean_session=False):
        self.hub = hub
        self.device_id = device_id
        self.connack = None
        self.disconnected = threading.Event()
        self.disconnect_rc = None
        self.connected = threading.Event()
        self.client = mqtt.Client(client_id=device_id, clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(hub.username(device_id), token)
        if tls:
            self.client.tls_set(ca_certs=hub.ca)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.port = hub.mqtts_port if tls else hub.mqtt_port
        self.keepalive = keepalive

    def _on_connect(self, client, userdata, flags, rc):
        self.connack = rc
        self.connected.set()

    def _on_disconnect(self, client, userdata, rc):
        self.disconnect_rc = rc
        self.disconnected.set()

    def connect(self, timeout=10):
        """Connects and returns the CONNACK return code."""
        self.client.reconnect_delay_set(min_delay=60, max_delay=120)
        self.client.connect("localhost", self.port, keepalive=self.keepalive)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise AssertionError("no CONNACK")
        if self.connack != 0:
            self.client.loop_stop()
        return self.connack

    def publish(self, topic, payload, qos=1, timeout=10):
        """Publishes and returns True when the hub acknowledged (QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            return info.rc == mqtt.MQTT_ERR_SUCCESS
        deadline = time.time() + timeout
        while time.time() < deadline:
            if info.is_published():
                return True
            if self.disconnected.is_set():
                return False
            time.sleep(0.01)
        return False

    def telemetry_topic(self, props=""):
        return f"devices/{self.device_id}/messages/events/{props}"

    def close(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
