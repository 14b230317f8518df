"""MQTT side: topics, payload schemas and the connection that publishes them."""

from agent.publish.mqtt import MqttPublisher
from agent.publish.payloads import DetectionsPayload, StatusPayload
from agent.publish.topics import Topics

__all__ = ["DetectionsPayload", "MqttPublisher", "StatusPayload", "Topics"]
