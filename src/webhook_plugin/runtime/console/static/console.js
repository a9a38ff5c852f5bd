// webhook-plugin console: small improvements only. Every page works without
// this file (forms post and redirect); it adds copy buttons, keeps a form
// from being sent twice by an impatient double click, and shows a
// conversation's new messages as they come (server-sent events).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-copy]")) {
    if (!navigator.clipboard) break;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy the secret");
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(el.textContent.trim());
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy it";
      }
    });
    el.after(" ", button);
  }

  for (const form of document.querySelectorAll("form[method='post']")) {
    form.addEventListener("submit", (event) => {
      if (form.dataset.sending) {
        event.preventDefault();
        return;
      }
      form.dataset.sending = "1";
      form.setAttribute("aria-busy", "true");
    });
  }

  const list = document.querySelector("#messages[data-events]");
  if (list && window.EventSource && window.DOMParser) follow(list.dataset.events);
});

// A conversation's page follows its news: on each "changed" event, the page is
// fetched again and its message list replaced (what is typed stays), and a
// status line tells screen readers. Without scripts the Refresh link does it.
function follow(url) {
  const events = new EventSource(url);
  events.addEventListener("changed", async () => {
    events.close();
    try {
      const answer = await fetch(window.location.pathname, { credentials: "same-origin" });
      if (!answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.querySelector("#messages");
      const current = document.querySelector("#messages");
      if (!fresh || !current) return;
      current.replaceWith(document.adoptNode(fresh));
      const news = document.querySelector("#news");
      if (news) news.textContent = "New message in this conversation.";
      if (fresh.dataset.events) follow(fresh.dataset.events);
    } catch {
      // offline for a moment: the Refresh link still works
    }
  });
}

// a page restored by the back button may be sent again
window.addEventListener("pageshow", () => {
  for (const form of document.querySelectorAll("form[data-sending]")) {
    delete form.dataset.sending;
    form.removeAttribute("aria-busy");
  }
});
