# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_portcullis_global_optspecs
    string join \n h/help V/version
end

function __fish_portcullis_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_portcullis_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_portcullis_using_subcommand
    set -l cmd (__fish_portcullis_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c portcullis -n "__fish_portcullis_needs_command" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_needs_command" -s V -l version -d 'Print version'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "run" -d 'Run the agent (as root, usually from systemd)'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "status" -d 'Programs attached, cgroup, counters, sessions, policy and audit state'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "flows" -d 'Recent outbound connects by workload and destination (from kernel events)'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "policy" -d 'Policy tools'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "audit" -d 'Audit log tools (work offline, on a copy of the files)'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "sessions" -d 'Recorded sessions (work offline, on the recording directory or a copy)'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "sql" -d 'SQL tools: how the agent reads statements (no policy, no server)'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "replay" -d 'Play a recorded session back with its original timing'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "detach" -d 'Remove enforcement (unpin all programs and maps). Audited. Stops the agent'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL (the Debian package installs bash, zsh and fish completions already)'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "generate-docs" -d 'Write the man pages and completion scripts under DIR (`cargo xtask manpages`)'
complete -c portcullis -n "__fish_portcullis_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand run" -l config -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand run" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand status" -l config -d 'Agent config (to find the admin socket and, for detach, the pins)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand status" -l socket -d 'Admin socket (overrides the config\'s)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand status" -l json -d 'Print the raw JSON document'
complete -c portcullis -n "__fish_portcullis_using_subcommand status" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand flows" -l config -d 'Agent config (to find the admin socket and, for detach, the pins)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand flows" -l socket -d 'Admin socket (overrides the config\'s)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand flows" -l json
complete -c portcullis -n "__fish_portcullis_using_subcommand flows" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "check" -d 'Check policy files or directories; prints every error; exits non-zero on any'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "reload" -d 'Ask the running agent to reload its policy directory'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "bench" -d 'Decision time of the policy engine on a synthetic policy (for `cargo xtask bench policy`)'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "suggest" -d 'Draft a policy (monitor mode) from the flows the running agent observed'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "schema" -d 'Print the JSON Schema of the policy format (for editors)'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "test" -d 'Run the policy unit tests (`*.test.yaml`) kept next to the policies'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "explain" -d 'Show how a request is decided: selectors, candidate rules, the winner and why'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and not __fish_seen_subcommand_from check reload bench suggest schema test explain help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from reload" -l config -d 'Agent config (to find the admin socket and, for detach, the pins)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from reload" -l socket -d 'Admin socket (overrides the config\'s)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from reload" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from bench" -l rules -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from bench" -l iterations -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from bench" -l sql -d 'Measure SQL analysis instead (pgbench\'s statement: uncached, cached, cached by shape, facts)'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from bench" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from suggest" -l config -d 'Agent config (to find the admin socket and, for detach, the pins)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from suggest" -l socket -d 'Admin socket (overrides the config\'s)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from suggest" -l min-connects -d 'Leave out flows seen fewer times than this' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from suggest" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from schema" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from test" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from explain" -l policy -d 'Policy directory or files' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from explain" -l workload -d 'The workload, as key=value pairs: uid, gid, user, group, exe, exe_sha256, comm, cgroup, unit, slice (e.g. `uid=0,exe=/usr/bin/psql`)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from explain" -l target -d 'Target name' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from explain" -l at -d 'Decide at this UTC time (e.g. 2026-01-05T12:00:00Z) instead of now' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from explain" -l sql -d 'Also decide this SQL text, sent as one simple-query message on a new session: the analysis and the decision of every statement' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from explain" -l db-user -d 'Database user of that session (for `"$user"` on the search_path); default: the workload\'s `user`, else `postgres`' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from explain" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "check" -d 'Check policy files or directories; prints every error; exits non-zero on any'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "reload" -d 'Ask the running agent to reload its policy directory'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "bench" -d 'Decision time of the policy engine on a synthetic policy (for `cargo xtask bench policy`)'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "suggest" -d 'Draft a policy (monitor mode) from the flows the running agent observed'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "schema" -d 'Print the JSON Schema of the policy format (for editors)'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "test" -d 'Run the policy unit tests (`*.test.yaml`) kept next to the policies'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "explain" -d 'Show how a request is decided: selectors, candidate rules, the winner and why'
complete -c portcullis -n "__fish_portcullis_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and not __fish_seen_subcommand_from verify export bench help" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and not __fish_seen_subcommand_from verify export bench help" -f -a "verify" -d 'Verify the hash chain and signed checkpoints of an audit log: reports the first modified, deleted, inserted, reordered or truncated record'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and not __fish_seen_subcommand_from verify export bench help" -f -a "export" -d 'Print records in seq order (filtered by time and type) as JSON lines or OCSF events, e.g. to load into a SIEM by hand'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and not __fish_seen_subcommand_from verify export bench help" -f -a "bench" -d 'Append throughput of the audit writer (for `cargo xtask bench audit`)'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and not __fish_seen_subcommand_from verify export bench help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from verify" -l pubkey -d 'Public key file (audit-signing.pub) to check checkpoint signatures against; without it, the key embedded in the checkpoints is used' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from export" -l since -d 'Only records at or after this time: RFC 3339 (2026-01-05T12:00:00Z) or an age such as 90s, 15m, 1h, 7d' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from export" -l until -d 'Only records before this time (same forms as --since)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from export" -l type -d 'Only records of this event type (repeat, or separate with commas)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from export" -l format -d '`jsonl`: the records as written (their hashes still verify); `ocsf`: one OCSF event per line' -r -f -a "jsonl\t''
json\t''
ocsf\t''"
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -l part -d 'Which measurement(s) to run' -r -f -a "writer\t''
end-to-end\t''
both\t''"
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -l records -d 'Records appended per mode' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -l dir -d 'Scratch directory: each mode writes `<dir>/<mode>/audit`. Left in place' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -l sync -d 'Which `audit_sync` mode(s) to measure' -r -f -a "batch\t''
none\t''
both\t''"
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -l queue -d 'Queue between the producer and the writer (as `audit_queue`)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -l rotate-bytes -d 'Rotation size in bytes (as `audit_rotate_bytes`; 0: never)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -l retain-bytes -d 'Retention by total size in bytes (as `audit_retain_bytes`; 0: keep all)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from bench" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Verify the hash chain and signed checkpoints of an audit log: reports the first modified, deleted, inserted, reordered or truncated record'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "export" -d 'Print records in seq order (filtered by time and type) as JSON lines or OCSF events, e.g. to load into a SIEM by hand'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "bench" -d 'Append throughput of the audit writer (for `cargo xtask bench audit`)'
complete -c portcullis -n "__fish_portcullis_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and not __fish_seen_subcommand_from list show export help" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and not __fish_seen_subcommand_from list show export help" -f -a "list" -d 'One line per recorded session, oldest first'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and not __fish_seen_subcommand_from list show export help" -f -a "show" -d 'A session\'s timeline: time offsets, requests, result tables, errors'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and not __fish_seen_subcommand_from list show export help" -f -a "export" -d 'Write a session as JSON Lines (the recording itself) or as an asciicast v2 file for the asciinema player'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and not __fish_seen_subcommand_from list show export help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l dir -d 'Recording directory (or a copy of it). Default: `recording_dir` of the agent config' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l config -d 'Agent config to take the recording directory from' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l since -d 'Sessions that started at or after this: RFC 3339, a date, or an age (`1h`, `2d`)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l until -d 'Sessions that started at or before this (same forms as --since)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l workload -d 'Sessions of this workload (one of the workloads the policy matched)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l target -d 'Sessions to this target (its policy name)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l decision -d 'Sessions with this connection decision (allow, deny, would_deny, ...)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l host -d 'Sessions recorded on this host' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -l json -d 'One JSON object per line instead of a table'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from show" -l dir -d 'Recording directory (or a copy of it). Default: `recording_dir` of the agent config' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from show" -l config -d 'Agent config to take the recording directory from' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from show" -l audit -d 'Audit directory: check the file\'s sha256 against the session\'s `connection` record; exits non-zero if they differ' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from export" -l dir -d 'Recording directory (or a copy of it). Default: `recording_dir` of the agent config' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from export" -l config -d 'Agent config to take the recording directory from' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from export" -l format -r -f -a "jsonl\t''
asciicast\t''"
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from export" -s o -l output -d 'Output file (default: standard output)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from help" -f -a "list" -d 'One line per recorded session, oldest first'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from help" -f -a "show" -d 'A session\'s timeline: time offsets, requests, result tables, errors'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from help" -f -a "export" -d 'Write a session as JSON Lines (the recording itself) or as an asciicast v2 file for the asciinema player'
complete -c portcullis -n "__fish_portcullis_using_subcommand sessions; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and not __fish_seen_subcommand_from analyze coverage help" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and not __fish_seen_subcommand_from analyze coverage help" -f -a "analyze" -d 'Show how the agent splits and analyses SQL text read on stdin: statement boundaries, kinds, tables and functions, or why it refuses the text. Exit status 1 when the text (any line, with --lines) is refused'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and not __fish_seen_subcommand_from analyze coverage help" -f -a "coverage" -d 'Of the statements in SQL files (psql scripts, or one statement per line), how many the agent analyses and how many it refuses whatever the policy says, with the constructs it cannot analyse grouped by leading keywords'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and not __fish_seen_subcommand_from analyze coverage help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from analyze" -l db-user -d 'Database user of the session (for `"$user"` on the search_path)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from analyze" -l search-path -d 'The session\'s search_path as a startup option would give it (default: `"$user", public`)' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from analyze" -l cache -d 'Entries of the analysis cache (0: none); the agent\'s default is 4096' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from analyze" -l json -d 'Print one JSON document instead of text'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from analyze" -l lines -d 'Read one message per line, each a JSON string (`"SELECT 1; SELECT 2"`), and print one JSON document per line, in order. The messages are one session (each assumed to succeed) until a line `null`, which starts a new session; the analysis cache is shared by all, as in the proxy'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from analyze" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from coverage" -l top -d 'How many constructs to list' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from coverage" -l json -d 'Print one JSON document instead of text'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from coverage" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from help" -f -a "analyze" -d 'Show how the agent splits and analyses SQL text read on stdin: statement boundaries, kinds, tables and functions, or why it refuses the text. Exit status 1 when the text (any line, with --lines) is refused'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from help" -f -a "coverage" -d 'Of the statements in SQL files (psql scripts, or one statement per line), how many the agent analyses and how many it refuses whatever the policy says, with the constructs it cannot analyse grouped by leading keywords'
complete -c portcullis -n "__fish_portcullis_using_subcommand sql; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand replay" -l dir -d 'Recording directory (or a copy of it). Default: `recording_dir` of the agent config' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand replay" -l config -d 'Agent config to take the recording directory from' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand replay" -l speed -d 'Playback speed: 2 is twice as fast; 0 prints everything at once' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand replay" -l idle-limit -d 'Never wait longer than this many seconds between two events' -r
complete -c portcullis -n "__fish_portcullis_using_subcommand replay" -l no-wait -d 'Print everything at once (same as --speed 0)'
complete -c portcullis -n "__fish_portcullis_using_subcommand replay" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand detach" -l config -d 'Agent config (to find the admin socket and, for detach, the pins)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand detach" -l socket -d 'Admin socket (overrides the config\'s)' -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand detach" -l yes -d 'Required: removing enforcement is never implicit'
complete -c portcullis -n "__fish_portcullis_using_subcommand detach" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand completions" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand generate-docs" -l out -r -F
complete -c portcullis -n "__fish_portcullis_using_subcommand generate-docs" -s h -l help -d 'Print help'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "run" -d 'Run the agent (as root, usually from systemd)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "status" -d 'Programs attached, cgroup, counters, sessions, policy and audit state'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "flows" -d 'Recent outbound connects by workload and destination (from kernel events)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "policy" -d 'Policy tools'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "audit" -d 'Audit log tools (work offline, on a copy of the files)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "sessions" -d 'Recorded sessions (work offline, on the recording directory or a copy)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "sql" -d 'SQL tools: how the agent reads statements (no policy, no server)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "replay" -d 'Play a recorded session back with its original timing'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "detach" -d 'Remove enforcement (unpin all programs and maps). Audited. Stops the agent'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "completions" -d 'Print the shell completion script for SHELL (the Debian package installs bash, zsh and fish completions already)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "generate-docs" -d 'Write the man pages and completion scripts under DIR (`cargo xtask manpages`)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and not __fish_seen_subcommand_from run status flows policy audit sessions sql replay detach completions generate-docs help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "check" -d 'Check policy files or directories; prints every error; exits non-zero on any'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "reload" -d 'Ask the running agent to reload its policy directory'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "bench" -d 'Decision time of the policy engine on a synthetic policy (for `cargo xtask bench policy`)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "suggest" -d 'Draft a policy (monitor mode) from the flows the running agent observed'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "schema" -d 'Print the JSON Schema of the policy format (for editors)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "test" -d 'Run the policy unit tests (`*.test.yaml`) kept next to the policies'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "explain" -d 'Show how a request is decided: selectors, candidate rules, the winner and why'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "verify" -d 'Verify the hash chain and signed checkpoints of an audit log: reports the first modified, deleted, inserted, reordered or truncated record'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "export" -d 'Print records in seq order (filtered by time and type) as JSON lines or OCSF events, e.g. to load into a SIEM by hand'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "bench" -d 'Append throughput of the audit writer (for `cargo xtask bench audit`)'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from sessions" -f -a "list" -d 'One line per recorded session, oldest first'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from sessions" -f -a "show" -d 'A session\'s timeline: time offsets, requests, result tables, errors'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from sessions" -f -a "export" -d 'Write a session as JSON Lines (the recording itself) or as an asciicast v2 file for the asciinema player'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from sql" -f -a "analyze" -d 'Show how the agent splits and analyses SQL text read on stdin: statement boundaries, kinds, tables and functions, or why it refuses the text. Exit status 1 when the text (any line, with --lines) is refused'
complete -c portcullis -n "__fish_portcullis_using_subcommand help; and __fish_seen_subcommand_from sql" -f -a "coverage" -d 'Of the statements in SQL files (psql scripts, or one statement per line), how many the agent analyses and how many it refuses whatever the policy says, with the constructs it cannot analyse grouped by leading keywords'
