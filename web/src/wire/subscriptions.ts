/**
 * Who hears which frames: handlers by event name, and '*' for every server frame that is not
 * a reply. A handler that throws is logged and does not keep the frame from the others.
 */

import type { EventHandler, ServerFrame } from './types';

export class Subscriptions {
  private handlers = new Map<string, Set<EventHandler>>();

  /** Subscribe to an event name, or '*' for every server frame that is not a reply. */
  on(event: string, handler: EventHandler): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler);
    return () => set.delete(handler);
  }

  /** A frame to its event's subscribers, then to '*'. */
  publish(frame: ServerFrame): void {
    this.emit(frame.event, frame);
    this.emit('*', frame);
  }

  emit(event: string, frame: ServerFrame): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        h(frame);
      } catch (e) {
        console.error('parley handler failed', event, e);
      }
    }
  }
}
