"""`modelship chat NAME`: a conversation with a model through the router's OpenAI API.

Each answer is streamed (printed as its tokens arrive) and kept in the history, which every
next request carries. `/clear`, `/system TEXT`, `/help`, `/exit` (or Ctrl-D). A router error
(an unknown model, a spent quota, a model still starting) is one line and the session goes on;
a router that cannot be reached ends it. Without a terminal on stdin it reads one prompt from
stdin, prints the answer and exits (for scripts).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import click

from .common import EXIT_FAILED, EXIT_NOT_FOUND, UserError, console, err_console, user_errors
from .reach import auth_headers, router, router_options

HELP = """/clear        forget the conversation (keeps the system prompt)
/system TEXT  set the system prompt (empty: none)
/help         this list
/exit         end (Ctrl-D too)"""


class Conversation:
    """The history and the sampling options: what each request sends."""

    def __init__(self, model: str, system: str | None, sampling: dict[str, Any]):
        self.model, self.system, self.sampling = model, system, sampling
        self.history: list[dict[str, str]] = []

    def request(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += self.history + [{"role": "user", "content": prompt}]
        body = {"model": self.model, "messages": messages, "stream": True}
        body.update({k: v for k, v in self.sampling.items() if v is not None})
        return body

    def answered(self, prompt: str, answer: str) -> None:
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    def command(self, line: str) -> str | None:
        """What a `/command` does, said in a line; None to end the session."""
        name, _, arg = line.strip().partition(" ")
        if name in ("/exit", "/quit"):
            return None
        if name == "/clear":
            self.history.clear()
            return "(history cleared)"
        if name == "/system":
            self.system = arg.strip() or None
            return f"(system prompt {'set' if self.system else 'removed'})"
        if name == "/help":
            return HELP
        return f"unknown command {name}; /help lists them"


def stream_answer(client: Any, url: str, body: dict, on_text: Callable[[str], None]) -> str:
    """Sends one request and hands each piece of the answer to `on_text`; the whole answer."""
    from .sse import CHAT_PATH, delta_text, error_from, events

    with client.stream("POST", url + CHAT_PATH, json=body) as response:
        if response.status_code != 200:
            response.read()
            raise error_from(response.status_code, response.headers, response.content)
        pieces = []
        for event in events(response.iter_lines()):
            text = delta_text(event)
            if text:
                pieces.append(text)
                on_text(text)
        return "".join(pieces)


def turn(client: Any, url: str, talk: Conversation, prompt: str) -> bool:
    """One question and its streamed answer; False when the router cannot be reached."""
    import httpx

    from .sse import RouterError

    out = sys.stdout

    def show(text: str) -> None:
        out.write(text)
        out.flush()

    try:
        answer = stream_answer(client, url, talk.request(prompt), show)
    except RouterError as e:
        from rich.markup import escape

        err_console().print(f"[red]Error:[/red] {escape(e.line())}", highlight=False, markup=True)
        return True
    except httpx.TransportError as e:
        raise UserError(f"cannot reach the router at {url} ({type(e).__name__}: {e})", EXIT_FAILED) from None
    out.write("\n")
    out.flush()
    talk.answered(prompt, answer)
    return True


def interactive(client: Any, url: str, talk: Conversation) -> None:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    con = console()
    con.print(f"Talking to [bold]{talk.model}[/bold] at {url}; /help for commands, /exit or Ctrl-D to end.",
              highlight=False)
    while True:
        try:
            line = input("> ")
        except EOFError:
            con.print()
            return
        except KeyboardInterrupt:
            con.print()
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            said = talk.command(line)
            if said is None:
                return
            con.print(said, highlight=False, markup=False)
            continue
        try:
            turn(client, url, talk, line)
        except KeyboardInterrupt:  # Ctrl-C stops this answer (not kept), not the session
            con.print("\n(interrupted)", highlight=False)


def once(client: Any, url: str, talk: Conversation, prompt: str) -> None:
    """Stdin is not a terminal: one prompt, its answer, and an exit code that says how it went."""
    import httpx

    from .sse import CHAT_PATH, RouterError

    if not prompt.strip():
        raise UserError("no prompt on stdin", EXIT_FAILED)
    try:
        stream_answer(client, url, talk.request(prompt.strip()), lambda t: (sys.stdout.write(t), sys.stdout.flush()))
    except RouterError as e:
        raise UserError(e.line(), EXIT_NOT_FOUND if e.status == 404 else EXIT_FAILED) from None
    except httpx.TransportError as e:
        raise UserError(f"cannot reach the router at {url}{CHAT_PATH} ({type(e).__name__}: {e})") from None
    sys.stdout.write("\n")


EXAMPLES = """
\b
Examples:
  modelship chat smollm2
  modelship chat smollm2 --system "Answer in one sentence." --temperature 0.2
  echo "What is Kubernetes?" | modelship chat smollm2 --max-tokens 64
  modelship chat smollm2 --router-url http://localhost:8000
"""


@click.command(epilog=EXAMPLES)
@click.argument("name")
@click.option("--system", default=None, help="System prompt.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (engine default if unset).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling.")
@click.option("--max-tokens", type=click.IntRange(1), default=None, help="Most tokens per answer.")
@click.option("--seed", type=int, default=None, help="Sampling seed, for repeatable answers.")
@click.option("--timeout", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Seconds to wait for an answer's next bytes.")
@router_options
@user_errors
def chat(name, system, temperature, top_p, max_tokens, seed, timeout, router_url, router_namespace, api_key,
         kubeconfig, context, namespace):
    """Talk to the model NAME through the router (OpenAI API, streamed)."""
    import httpx

    talk = Conversation(name, system, {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                                       "seed": seed})
    with router(router_url, router_namespace, kubeconfig, context, namespace) as url:
        with httpx.Client(headers=auth_headers(api_key), timeout=httpx.Timeout(timeout, connect=10)) as client:
            if sys.stdin.isatty():
                interactive(client, url, talk)
            else:
                once(client, url, talk, sys.stdin.read())


COMMANDS = [chat]
