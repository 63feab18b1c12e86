package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/keygate/keygate/admincli"
	"github.com/keygate/keygate/inject"
)

// runOther runs the commands beyond serve.
func runOther(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) error {
	switch args[0] {
	case "sign":
		return runSign(args[1:], env, stdout, stderr)
	case "rekey":
		return runRekey(ctx, args[1:], env, stdout, stderr)
	case "inject":
		return runInject(ctx, env, stderr)
	case "admin":
		code := admincli.Run(ctx, args[1:], env, admincli.IO{Stdin: os.Stdin, Stdout: stdout, Stderr: stderr})
		if code != admincli.ExitOK {
			return exitCode(code)
		}
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// exitCode ends keygate with a code whose message was printed already
// (keygate admin's exit codes).
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// runInject runs the Kubernetes mutating admission webhook, configured by
// KEYGATE_INJECT_* variables, until ctx is done.
func runInject(ctx context.Context, env map[string]string, stderr io.Writer) error {
	level := env["KEYGATE_LOG_LEVEL"]
	if level == "" {
		level = "info"
	}
	format := env["KEYGATE_LOG_FORMAT"]
	if format == "" {
		format = "json"
	}
	log, flush := newLogger(config{LogLevel: level, LogFormat: format}, stderr)
	defer flush()
	return inject.Run(ctx, func(k string) string { return env[k] }, log.Named("inject"))
}

func versionString() string {
	v := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	return "keygate " + v
}
