package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
)

// runOther runs the commands beyond serve.
func runOther(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) error {
	_ = ctx
	_ = env
	_ = stdout
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func versionString() string {
	v := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	return "keygate " + v
}
