"""One MQTT connection, driven from asyncio: paho-mqtt (2.x) runs its network loop in a thread
of its own, and every result comes back to the event loop as a future.

A fresh paho client per connection, with paho's own reconnecting off: whoever holds the link
decides when to try again (with jittered backoff), and nothing paho queued for a dead
connection is re-sent behind the spool's back. Acknowledgements are matched to their
messages on the event loop's thread only (paho calls back from its thread), so no lock is
ever held across a paho call.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..config import UpstreamConfig
from . import UpstreamError

#: PUBACK reason codes from 0x80 up are refusals (MQTT 5, section 3.4.2.1).
REFUSED = 0x80


class MqttError(UpstreamError):
    """The broker cannot be reached, refused the connection, or the connection ended: one
    line naming the broker and why."""


@dataclass(frozen=True)
class MqttSettings:
    """What a connection needs, resolved from the configuration (the password read)."""

    host: str
    port: int
    client_id: str
    protocol: int  # mqtt.MQTTv5 or mqtt.MQTTv311
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    # A subscriber's session outlives its connection (the broker keeps its messages while it
    # is away) for this long; 0: a clean session every time (the publisher: the spool keeps).
    session_expiry_s: int = 0
    # MQTT 5: the largest packet this client takes; the broker drops larger ones for it
    # rather than send them (the collector: no oversized payload reaches its memory). 0: any.
    max_packet_bytes: int = 0

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def settings_from(cfg: UpstreamConfig, client_id: str, session_expiry_s: int = 0) -> MqttSettings:
    """Resolve the configuration: read the password, build the TLS context. Raises
    MqttError with one line when a file or variable cannot be used."""
    return MqttSettings(
        session_expiry_s=session_expiry_s,
        host=cfg.host,
        port=cfg.port or (8883 if cfg.tls else 1883),
        client_id=cfg.client_id or client_id,
        protocol=mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311,
        keepalive_s=cfg.keepalive_s,
        username=cfg.username or None,
        password=_password(cfg),
        tls=tls_context(cfg) if cfg.tls else None,
    )


def _password(cfg: UpstreamConfig) -> str | None:
    if cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as exc:
            raise MqttError(f"upstream.password_file {cfg.password_file}: {exc.strerror}") from None
    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise MqttError(f"upstream.password_env: ${cfg.password_env} is not set")
        return value
    return None


def tls_context(cfg: UpstreamConfig) -> ssl.SSLContext:
    """Certificate verification (chain and host name) on unless `tls_verify = false`."""
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file or None)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise MqttError(f"upstream TLS files: {exc}") from None
    if not cfg.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class MqttLink:
    """One connection: `open()`, then `publish()` (a future of the PUBACK's reason code),
    `subscribe()` and `unsubscribe()`; `closed` completes when the connection ends; `close()`
    ends it. Received messages go to `on_message` (on the event loop). With `manual_ack` a
    received message is acknowledged only when told (`ack`): after the subscriber has stored
    it, so a crash in between gets it delivered again."""

    #: A PUBACK means the broker has the message, not that its consumer stored it.
    acks_stored = False

    def __init__(
        self,
        settings: MqttSettings,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        wake: asyncio.Event | None = None,
        manual_ack: bool = False,
    ):
        self.settings = settings
        self._loop = asyncio.get_running_loop()
        self.on_message = on_message
        self._wake = wake or asyncio.Event()
        self._pending: dict[int, asyncio.Future] = {}
        self._connack: asyncio.Future = self._loop.create_future()
        self.closed: asyncio.Future = self._loop.create_future()
        self._thread: threading.Thread | None = None
        v5 = settings.protocol == mqtt.MQTTv5
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=settings.protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            **({} if v5 else {"clean_session": not settings.session_expiry_s}),
        )
        client.connect_timeout = settings.connect_timeout_s
        if settings.username:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls is not None:
            client.tls_set_context(settings.tls)
        if will is not None:
            client.will_set(will[0], will[1], qos=1)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_subscribe
        client.on_message = self._on_paho_message
        self._client = client

    async def open(self) -> None:
        """Connect and wait for the broker's CONNACK; MqttError when that fails."""
        self._thread = threading.Thread(target=self._network, name="mqtt", daemon=True)
        self._thread.start()
        done, _ = await asyncio.wait([self._connack, self.closed], return_when="FIRST_COMPLETED")
        if self._connack in done and self._connack.exception() is None:
            return
        await self.close()
        error = self._connack.exception() if self._connack.done() else None
        raise error or self.closed.exception() or MqttError(f"{self.settings.where}: closed")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future:
        """Send with QoS 1; the future gets the PUBACK's reason code (0 = accepted), or
        MqttError when the connection ends first."""
        future = self._loop.create_future()
        if self.closed.done():
            future.set_exception(MqttError(f"{self.settings.where}: not connected"))
            return future
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            future.set_exception(
                MqttError(f"{self.settings.where}: publish failed: {mqtt.error_string(info.rc)}")
            )
            return future
        self._pending[info.mid] = future
        return future

    def subscribe(self, topics: list[str]) -> asyncio.Future:
        """Subscribe with QoS 1; the future completes with the SUBACK's reason codes."""
        future = self._loop.create_future()
        rc, mid = self._client.subscribe([(t, 1) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            future.set_exception(MqttError(f"{self.settings.where}: subscribe failed"))
        else:
            self._pending[mid] = future
        return future

    def unsubscribe(self, topics: list[str]) -> asyncio.Future:
        """Unsubscribe; the future completes with the UNSUBACK's reason codes (MQTT 5; []
        with 3.1.1)."""
        future = self._loop.create_future()
        rc, mid = self._client.unsubscribe(topics)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            future.set_exception(MqttError(f"{self.settings.where}: unsubscribe failed"))
        else:
            self._pending[mid] = future
        return future

    @property
    def where(self) -> str:
        return self.settings.where

    async def close(self) -> None:
        """Disconnect (the will is then not sent) and wait for the network thread."""
        self._client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.settings.connect_timeout_s + 5)
        self._closed(MqttError(f"{self.settings.where}: closed"))

    # -- the network thread -------------------------------------------------------------

    def ack(self, message: mqtt.MQTTMessage) -> None:
        """Acknowledge a received QoS 1 message (the broker then forgets it)."""
        if message.qos and not self.closed.done():
            self._client.ack(message.mid, message.qos)

    def _network(self) -> None:
        s = self.settings
        options = {}
        if s.protocol == mqtt.MQTTv5:
            options["clean_start"] = not s.session_expiry_s
            properties = Properties(PacketTypes.CONNECT)
            if s.session_expiry_s:
                properties.SessionExpiryInterval = s.session_expiry_s
            if s.max_packet_bytes:
                properties.MaximumPacketSize = s.max_packet_bytes
            if not properties.isEmpty():
                options["properties"] = properties
        try:
            self._client.connect(s.host, s.port, keepalive=s.keepalive_s, **options)
            self._client.loop_forever()
            error = MqttError(f"{s.where}: connection lost")
        except ssl.SSLCertVerificationError as exc:
            error = MqttError(f"{s.where}: the broker's TLS certificate does not verify: {exc}")
        except (OSError, ssl.SSLError) as exc:
            error = MqttError(f"{s.where}: cannot connect: {exc.strerror or exc}")
        except Exception as exc:  # paho raises ValueError and others on bad settings
            error = MqttError(f"{s.where}: {type(exc).__name__}: {exc}")
        self._loop.call_soon_threadsafe(self._closed, error)

    # paho's callbacks run in the network thread: hand everything to the event loop.

    def _on_connect(self, client, userdata, flags, reason: ReasonCode, properties) -> None:
        self._loop.call_soon_threadsafe(self._connected, reason.is_failure, str(reason))

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self._loop.call_soon_threadsafe(
            self._closed, MqttError(f"{self.settings.where}: disconnected ({reason})")
        )

    def _on_publish(self, client, userdata, mid: int, reason: ReasonCode, properties) -> None:
        self._loop.call_soon_threadsafe(self._settle, mid, reason.value)

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        """SUBACK and UNSUBACK alike: their reason codes, one per topic."""
        self._loop.call_soon_threadsafe(self._settle, mid, [r.value for r in reasons])

    def _on_paho_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self._deliver, message)

    # -- on the event loop ----------------------------------------------------------------

    def _connected(self, failed: bool, reason: str) -> None:
        if self._connack.done():
            return
        if failed:
            self._connack.set_exception(
                MqttError(f"{self.settings.where}: the broker refused the connection: {reason}")
            )
        else:
            self._connack.set_result(None)

    def _deliver(self, message: mqtt.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message)

    def _settle(self, mid: int, result) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(result)
        self._wake.set()

    def _closed(self, error: MqttError) -> None:
        if self.closed.done():
            return
        self.closed.set_exception(error)
        self.closed.exception()  # retrieved: nobody has to await a link that went quietly
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._pending.clear()
        if not self._connack.done():
            self._connack.set_exception(error)
            self._connack.exception()
        self._wake.set()
