"""Pure logic: decoding, sketches, wire messages, merging and emission rules.

Nothing in this package imports Faust or a Kafka client, so all of it is unit-tested
without a broker.
"""
