"""Plain Kafka clients (confluent-kafka) configured from settings: admin, producer, consumer."""
