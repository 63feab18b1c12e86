//go:build !linux

package main

// releaseStartupPages is a Linux refinement (trim_linux.go); elsewhere the
// pages stay.
func releaseStartupPages() (int64, error) { return 0, nil }
