// Package deploy holds what runs peerport as a service: the systemd units in
// systemd/, installed by ../install.sh --service, and in cluster/ a
// three-node broker cluster over NATS (compose file, NATS configs, systemd
// units; docs/cluster.md). It has no code; its tests run install.sh into a
// throwaway root and check what it wrote, and check the cluster example with
// the parsers that read it (nats-server's, the broker's, YAML).
package deploy
