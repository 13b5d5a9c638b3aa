"""Debian and Ubuntu: dpkg's database, apt repositories, and the three ways to install."""
