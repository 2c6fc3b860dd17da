#!/usr/bin/env python3
"""gen-options.py - write orderd.conf(5)'s option tables from the daemon's own schemas.

The key tables in man/orderd.conf.5 (core keys and one section per plugin)
are generated from what the built daemon and plugins declare, so the manual
says exactly what --check-config accepts.  The generated text is committed:
installing the man pages needs neither Python nor a built tree.

Regenerate after changing any schema (a key, its type, default or help):

    cd BUILDDIR && make                       # the daemon and every plugin
    ORDERD_PLUGIN_PATH=$(ls -d $PWD/plugins/*/.libs | paste -sd:) \\
        SRCDIR/man/gen-options.py --orderd core/orderd
    git diff SRCDIR/man/orderd.conf.5         # review, then commit

Build with every plugin enabled, or the sections of the missing ones are
dropped.  --check only reports whether the file is up to date (exit 1 if not).
tests/integration/docs.sh checks, against the running build, that every key
is documented; it fails when this script has not been re-run.

It runs `orderd --help-config --json`, `orderd --list-plugins` and
`orderd --help-plugin NAME --json` and rewrites the text between the lines
    .\\" BEGIN GENERATED OPTIONS
    .\\" END GENERATED OPTIONS
Nothing outside those lines is touched.  Python 3 standard library only.

Conventions the test relies on: every key is a `.TP` entry whose tag line is
`.B key`; each plugin has `.SS "NAME plugin"`; each of its stages starts with
`.B "KIND stage"`; core keys live under `.SH "CORE KEYS"`.
"""

import argparse
import json
import os
import re
import subprocess
import sys

BEGIN = '.\\" BEGIN GENERATED OPTIONS'
END = '.\\" END GENERATED OPTIONS'

# Test-only plugins that may sit in a build tree's plugin path.
EXCLUDED = re.compile(r'^(testkit|abi.*)$')

# Defaults that depend on configure's directories: show the packaged value.
BUILD_DEFAULTS = {
    'state_dir': ('/var/lib/orderd', '\\fIlocalstatedir\\fR/lib/orderd as configured'),
    'plugin_dir': ('/usr/lib/orderd', '\\fIlibdir\\fR/orderd as configured'),
}

FLAG_TEXT = {
    'async_settle': 'may finish messages asynchronously (PENDING, settled later)',
    'serial': 'never called from two worker threads at once',
    'redelivers': 'its source redelivers abandoned messages itself',
    'deadletters': 'its source keeps its own dead-letter queue',
}


def esc(text):
    """Escape plain text for a roff text line or macro argument."""
    text = text.replace('\\', '\\e').replace('-', '\\-')
    return text


def text_line(text):
    """A text line that never starts a request."""
    if text[:1] in ('.', "'"):
        return '\\&' + text
    return text


def sentence(help_text, capital=False):
    h = help_text.strip()
    if not h:
        return 'Undocumented.'
    if capital:
        h = h[0].upper() + h[1:]
    if h[-1] not in '.!?)':
        h += '.'
    elif h[-1] == ')' and not h.endswith('.)'):
        h += '.'
    return h


def bold(text):
    return '\\fB' + esc(text) + '\\fR'


def describe(opt, top_level):
    """The '(type; default; flags)' line of one key."""
    parts = [opt['type']]
    if opt.get('state_path'):
        parts[0] += ', relative to the state directory'
    default = opt.get('default')
    if top_level and opt['key'] in BUILD_DEFAULTS and default is not None:
        value, note = BUILD_DEFAULTS[opt['key']]
        parts.append('default ' + bold(value) + ', that is ' + note)
    elif default == '{}':
        pass    # a group whose absent keys take their own defaults
    elif default is not None and default != '':
        parts.append('default ' + bold(default))
    if opt.get('required'):
        parts.append('required')
    if opt.get('secret'):
        parts.append('secret')
    if opt.get('choices'):
        parts.append('one of ' + ', '.join(bold(c) for c in opt['choices'].split('|')))
    line = '(\\fI' + esc(parts[0]) + '\\fR' + ''.join('; ' + p for p in parts[1:]) + ')'
    return line


def signature(keys):
    return json.dumps(keys, sort_keys=True)


class Writer:
    def __init__(self):
        self.out = []
        self.seen = {}     # signature of a group's keys -> where it is documented

    def emit(self, line):
        self.out.append(line)

    def keys(self, opts, top_level=False, path=''):
        for o in opts:
            self.emit('.TP')
            self.emit('.B ' + o['key'])
            self.emit(text_line(describe(o, top_level)))
            self.emit(text_line(esc(sentence(o.get('help', '')))))
            if o.get('secret'):
                self.emit(text_line('Instead of the value, give ' +
                                    bold(o['key'] + '_file') + ' (a file holding it) or ' +
                                    bold(o['key'] + '_env') +
                                    ' (an environment variable holding it); it is redacted in '
                                    'every log line and in \\fB\\-\\-dump\\-config\\fR.'))
            sub = o.get('keys')
            if not sub:
                continue
            sig = signature(sub)
            name = (path + '.' if path else '') + o['key']
            if sig in self.seen:
                self.emit(text_line(self.seen[sig]))
                continue
            self.seen[sig] = 'Same keys as ' + bold(name) + ' above.'
            if o['type'] == 'list of groups':
                self.emit(text_line('Each element is a group of these keys:'))
            else:
                self.emit(text_line('Its keys:'))
            self.emit('.RS')
            self.keys(sub, False, name + '[]' if o['type'] == 'list of groups' else name)
            self.emit('.RE')


def run(cmd, env):
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         universal_newlines=True)
    if res.returncode != 0:
        sys.exit('gen-options.py: %s failed (%d): %s' % (' '.join(cmd), res.returncode,
                                                         res.stderr.strip()))
    return res.stdout


def list_plugins(orderd, env):
    names = []
    for line in run([orderd, '--list-plugins'], env).splitlines()[1:]:
        f = line.split()
        if f and not EXCLUDED.match(f[0]):
            names.append(f[0])
    return sorted(names)


def generate(core, plugins):
    w = Writer()
    e = w.emit
    # Groups documented in their own subsection are referred to, not repeated.
    w.seen[signature(core['spool'])] = 'Its keys are listed under \\fBSpool keys\\fR below.'
    pipelines = [o for o in core['top'] if o['key'] == 'pipelines'][0]['keys']
    w.seen[signature(pipelines)] = 'Each element is a group of the keys listed under \\fBPipeline keys\\fR below.'
    stage_keys = [o for o in core['pipeline'] if o['key'] == 'input'][0]['keys']
    w.seen[signature(stage_keys)] = 'Its keys are listed under \\fBStage keys\\fR below.'

    e('.\\" Generated by man/gen-options.py from orderd --help-config --json and')
    e('.\\" orderd --help-plugin NAME --json.  Do not edit by hand: change the schema')
    e('.\\" (the plugin\'s orderd_option table, or core/conf.c) and re-run the script.')
    e('.SH "CORE KEYS"')
    e('Types, units and path rules are described under')
    e('.BR VALUES .')
    e('A key that is not required and has no default is unset when absent.')
    e('.SS "Top-level keys"')
    w.keys(core['top'], top_level=True)
    e('.SS "Pipeline keys"')
    e('Each element of')
    e('.B pipelines')
    e('is a group of these keys.')
    e('.BR workers ", " queue_size ", " retry " and " batch')
    e('default to the top-level values of the same name.')
    w.keys(core['pipeline'], path='pipelines[]')
    e('.SS "Spool keys"')
    e('The group')
    e('.B spool')
    e('of a pipeline takes:')
    w.keys(core['spool'], path='spool')
    e('.SS "Stage keys"')
    e('Every stage group')
    e('.RB ( input ", each element of " transforms ", " store ", each element of " publish )')
    e('takes these keys, and the keys of its plugin\'s stage of that kind (see')
    e('.BR PLUGINS ).')
    w.keys(stage_keys)

    e('.SH PLUGINS')
    e('One subsection per plugin shipped with orderd, as the plugin itself declares')
    e('it.  A stage group names the plugin with')
    e('.BR plugin ;')
    e('its kind is given by where the group stands in the pipeline.')
    e('What each plugin does with messages is described under')
    e('.BR "MESSAGES AND EVENTS" .')
    e('.B "orderd \\-\\-help\\-plugin"')
    e('.I NAME')
    e('prints the same tables for any installed plugin, partners\' included.')
    for p in plugins:
        kinds = [s['kind'] for s in p['stages']]
        e('.SS "%s plugin"' % p['name'])
        e(text_line(esc(sentence(p.get('description', ''), True))))
        if len(kinds) == 1:
            provides = ('an ' if kinds[0] == 'input' else 'a ') + bold(kinds[0]) + ' stage'
        else:
            provides = ', '.join(bold(k) for k in kinds[:-1]) + ' and ' + bold(kinds[-1]) + ' stages'
        e(text_line('Version ' + esc(p.get('version') or '?') + '; provides ' + provides + '.'))
        for s in p['stages']:
            e('.PP')
            e('.B "%s stage"' % s['kind'])
            e('\\(em')
            e(text_line(esc(sentence(s.get('description', ''), True))))
            for f in s.get('flags', []):
                e(text_line('This stage ' + esc(FLAG_TEXT.get(f, f)) + '.'))
            opts = s.get('options') or []
            if not opts:
                e('It has no keys of its own.')
                continue
            e('Keys, besides')
            e('.BR plugin " and " name :')
            w.keys(opts)
    return w.out


def main():
    ap = argparse.ArgumentParser(description='Regenerate the option tables of orderd.conf(5).')
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument('--orderd', default=os.environ.get('ORDERD_BIN', 'orderd'),
                    help='the orderd binary (default: $ORDERD_BIN or orderd in $PATH)')
    ap.add_argument('--plugin-path', default=os.environ.get('ORDERD_PLUGIN_PATH'),
                    help='plugin search path (default: $ORDERD_PLUGIN_PATH)')
    ap.add_argument('--man', default=os.path.join(here, 'orderd.conf.5'),
                    help='the page to update (default: orderd.conf.5 beside this script)')
    ap.add_argument('--check', action='store_true',
                    help='do not write; exit 1 if the page is out of date')
    args = ap.parse_args()

    env = dict(os.environ)
    if args.plugin_path:
        env['ORDERD_PLUGIN_PATH'] = args.plugin_path
    core = json.loads(run([args.orderd, '--help-config', '--json'], env))
    names = list_plugins(args.orderd, env)
    if not names:
        sys.exit('gen-options.py: no plugins found; set ORDERD_PLUGIN_PATH or --plugin-path')
    plugins = [json.loads(run([args.orderd, '--help-plugin', n, '--json'], env)) for n in names]

    with open(args.man, encoding='utf-8') as f:
        lines = f.read().split('\n')
    try:
        b = lines.index(BEGIN)
        en = lines.index(END, b)
    except ValueError:
        sys.exit('gen-options.py: %s lacks the marker lines %s / %s' % (args.man, BEGIN, END))
    new = lines[:b + 1] + generate(core, plugins) + lines[en:]
    if new == lines:
        return 0
    if args.check:
        print('gen-options.py: %s is out of date; re-run without --check' % args.man,
              file=sys.stderr)
        return 1
    tmp = args.man + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write('\n'.join(new))
    os.replace(tmp, args.man)
    print('gen-options.py: updated %s (%d plugins)' % (args.man, len(plugins)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
