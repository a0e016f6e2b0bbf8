"""The RabbitMQ fixtures (:mod:`tests.rabbitmq`)."""

from tests.rabbitmq import amqp_url, broker

__all__ = ["amqp_url", "broker"]
