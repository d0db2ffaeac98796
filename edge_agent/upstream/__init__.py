"""Where spooled payloads go: an MQTT broker (`mqtt_link`), a file (`file_link`), through the
one `publisher` that reads the spool in order and deletes what the upstream acknowledged."""


class UpstreamError(Exception):
    """The upstream cannot take payloads now: one line naming it and why."""
