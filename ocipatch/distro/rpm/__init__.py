"""rpm (RHEL, Fedora, SUSE, Amazon Linux, Azure Linux): header blobs, rpmdb backends, versions."""
