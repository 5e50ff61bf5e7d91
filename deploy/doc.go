// Package deploy holds what runs peerport as a service: the systemd units in
// systemd/, installed by ../install.sh --service. It has no code; its tests
// run install.sh into a throwaway root and check what it wrote.
package deploy
