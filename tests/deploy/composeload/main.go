// composeload loads a compose file with compose-go, the loader inside Docker Compose v2, and prints the resolved
// project as JSON: the same schema validation, ${VAR} interpolation, profile selection and depends_on consistency
// checks that `docker compose config` runs, without needing Docker. Used by tests/deploy/test_compose.py.
//
// Usage: composeload FILE [PROFILE...]   (variables come from the environment only, not from a .env file)
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: composeload FILE [PROFILE...]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(file string, profiles []string) error {
	options, err := cli.NewProjectOptions(
		[]string{file}, cli.WithOsEnv, cli.WithProfiles(profiles), cli.WithName("composeload"),
	)
	if err != nil {
		return err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return err
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
