"""The AMQP result publisher: fills the RabbitMQ queue of every task group whose results go
to the Globus Compute SDK's Executor (``create_queue`` at submit), from the group's results
stream, in completion order, each result once.

``async with Publisher(PublisherSettings.from_env()) as publisher: await publisher.run()``,
or ``fxbroker amqp-publisher``.

Modules::

    publisher  the loop: leases, cursors, publishing with confirms, the delivery contract
    messages   a completion notice (or task hash) as that SDK's Result message (pure)
    settings   PublisherSettings, from keywords or the environment
"""
