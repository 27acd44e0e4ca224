"""Helpers shared by the tests (no test module imports another): servers (couchdb, amqp),
keyrings and run folders (gpg), real and original-tool archives (archives, legacy_tool),
driving the commands (cli, localrun, deployment, workspace), waiting (waiting), a fake
clock (clock), file sizes (blocks), clusters (cluster, netns, relay)."""
