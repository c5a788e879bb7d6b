// Command summary turns a conformance run (the suite's `go test -v` log and its report) into
// docs/conformance/<version>/: the upstream-format report, and SUMMARY.md, every test with
// its result and, for a failure, the suite's first error. It fails when a test that passed
// in the committed SUMMARY.md did not pass now.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

type result struct {
	status string // passed, failed, skipped
	reason string
}

var (
	header = regexp.MustCompile(`^=== (RUN|CONT|NAME|PAUSE)\s+TestConformance/([^/\s]+)`)
	done   = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): TestConformance/([^/\s]+) `)
	skip   = regexp.MustCompile(`Skipping (\S+): (.*)$`)
	row    = regexp.MustCompile(`^\| (\S+) \| (passed|failed|skipped) \|`)
)

func main() {
	logPath := flag.String("log", "", "the suite's go test -v output")
	report := flag.String("report", "", "the report the suite wrote")
	committed := flag.String("committed", "", "the committed report (its SUMMARY.md beside it is compared)")
	out := flag.String("out", "", "directory for portico-report.yaml and SUMMARY.md")
	flag.Parse()
	results, err := parse(*logPath)
	if err != nil {
		fail(err)
	}
	before := previous(filepath.Join(filepath.Dir(*committed), "SUMMARY.md"))
	data, err := os.ReadFile(*report)
	if err != nil {
		fail(fmt.Errorf("the suite wrote no report: %w", err))
	}
	if err := os.WriteFile(filepath.Join(*out, "portico-report.yaml"), data, 0o644); err != nil {
		fail(err)
	}
	names := make([]string, 0, len(results))
	counts := map[string]int{}
	for n, r := range results {
		names = append(names, n)
		counts[r.status]++
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "# Gateway API conformance: Portico\n\nWritten by `make conformance` (tests/conformance/run.sh) from the suite's log; the\nupstream-format report is `portico-report.yaml` beside this file. %d passed, %d failed,\n%d skipped (skipped: not in the profiles run, a feature Portico does not claim, or mesh).\n\n", counts["passed"], counts["failed"], counts["skipped"])
	b.WriteString("| Test | Result | Why |\n| --- | --- | --- |\n")
	for _, n := range names {
		r := results[n]
		fmt.Fprintf(&b, "| %s | %s | %s |\n", n, r.status, strings.ReplaceAll(r.reason, "|", "\\|"))
	}
	if err := os.WriteFile(filepath.Join(*out, "SUMMARY.md"), []byte(b.String()), 0o644); err != nil {
		fail(err)
	}
	var regressions []string
	for n, st := range before {
		if st == "passed" && results[n].status != "passed" {
			regressions = append(regressions, fmt.Sprintf("%s: %s %s", n, results[n].status, results[n].reason))
		}
	}
	sort.Strings(regressions)
	fmt.Printf("conformance: %d passed, %d failed, %d skipped\n", counts["passed"], counts["failed"], counts["skipped"])
	if len(regressions) > 0 {
		fmt.Printf("conformance: %d tests passed in the committed summary and do not pass now:\n  %s\n",
			len(regressions), strings.Join(regressions, "\n  "))
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "summary:", err)
	os.Exit(2)
}

// parse reads each top-level test's result from the log, with the first error of a failure
// and the reason of a skip.
func parse(path string) (map[string]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	results := map[string]result{}
	reasons := map[string]string{}
	haveMessage := map[string]bool{}
	current := ""
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	wantNext := false
	for s.Scan() {
		line := s.Text()
		if m := header.FindStringSubmatch(line); m != nil {
			current = m[2]
			continue
		}
		if m := done.FindStringSubmatch(line); m != nil {
			status := map[string]string{"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}[m[1]]
			results[m[2]] = result{status: status, reason: reasons[m[2]]}
			continue
		}
		if m := skip.FindStringSubmatch(line); m != nil {
			reasons[m[1]] = strings.TrimSpace(m[2])
			continue
		}
		if current == "" || haveMessage[current] {
			continue
		}
		t := strings.TrimSpace(line)
		if wantNext && t != "" {
			reasons[current] = strings.TrimSpace(reasons[current] + " " + t)
			wantNext = false
			continue
		}
		if rest, ok := strings.CutPrefix(t, "Messages:"); ok && reasons[current] != "" && !haveMessage[current] {
			haveMessage[current] = true
			reasons[current] = strings.TrimSpace(rest) + ": " + reasons[current]
			continue
		}
		if rest, ok := strings.CutPrefix(t, "Error:"); ok && reasons[current] == "" {
			r := strings.TrimSpace(rest)
			reasons[current] = r
			// "Received unexpected error:" and the like: the error is on the next line.
			wantNext = r == "" || strings.HasSuffix(r, ":")
		}
	}
	return results, s.Err()
}

// previous reads the results of the committed SUMMARY.md (none when there is none yet).
func previous(path string) map[string]string {
	out := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if m := row.FindStringSubmatch(s.Text()); m != nil {
			out[m[1]] = m[2]
		}
	}
	return out
}
